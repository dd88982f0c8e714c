//! The `Idempotency-Key` value: an RFC 8941 sf-string (`"…"`) or a bare token, as the IETF draft
//! (draft-ietf-httpapi-idempotency-key-header) and common practice use it.

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum KeyError {
    Missing,
    Malformed(&'static str),
}

/// Validates a key header value and returns the key itself (quotes and escapes removed).
pub fn parse_key(raw: Option<&[u8]>, max_length: usize) -> Result<Vec<u8>, KeyError> {
    let raw = raw.ok_or(KeyError::Missing)?.trim_ascii();
    if raw.is_empty() {
        return Err(KeyError::Missing);
    }
    let key = match raw.strip_prefix(b"\"") {
        Some(quoted) => unquote(quoted)?,
        None => {
            if !raw.iter().all(|&b| is_bare_key_char(b)) {
                return Err(KeyError::Malformed(
                    "a bare key must be visible ASCII without quotes, commas or semicolons",
                ));
            }
            raw.to_vec()
        }
    };
    if key.is_empty() {
        return Err(KeyError::Malformed("the key is empty"));
    }
    if key.len() > max_length {
        return Err(KeyError::Malformed("the key is longer than allowed"));
    }
    if !key.iter().all(u8::is_ascii_graphic) {
        return Err(KeyError::Malformed("the key must be visible ASCII"));
    }
    Ok(key)
}

/// Visible ASCII except what would make the value ambiguous as a structured field.
fn is_bare_key_char(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\')
}

/// An sf-string body after the opening quote: `\"` and `\\` escapes, then a closing quote.
fn unquote(body: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut out = Vec::with_capacity(body.len());
    let mut bytes = body.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&e @ (b'"' | b'\\')) => out.push(e),
                _ => return Err(KeyError::Malformed("a bad escape in the quoted key")),
            },
            b'"' => {
                return if bytes.next().is_none() {
                    Ok(out)
                } else {
                    Err(KeyError::Malformed(
                        "text after the closing quote (parameters are not allowed)",
                    ))
                };
            }
            b' '..=b'~' => out.push(b),
            _ => {
                return Err(KeyError::Malformed(
                    "the quoted key must be printable ASCII",
                ))
            }
        }
    }
    Err(KeyError::Malformed("the quoted key has no closing quote"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_strings_and_tokens() {
        let ok = |raw: &str| parse_key(Some(raw.as_bytes()), 255);
        assert_eq!(
            ok("\"8e03978e-40d5-43e8-bc93-6894a57f9324\"").unwrap(),
            b"8e03978e-40d5-43e8-bc93-6894a57f9324"
        );
        assert_eq!(ok("abc-123_x.y:z/=").unwrap(), b"abc-123_x.y:z/=");
        assert_eq!(ok("  padded ").unwrap(), b"padded");
        assert_eq!(ok(r#""a\"b\\c""#).unwrap(), br#"a"b\c"#);
        assert_eq!(ok("x").unwrap(), b"x");
    }

    #[test]
    fn rejects_what_is_not_a_key() {
        assert_eq!(parse_key(None, 255), Err(KeyError::Missing));
        assert_eq!(parse_key(Some(b"   "), 255), Err(KeyError::Missing));
        for bad in [
            &b"\"\""[..],
            b"\"unterminated",
            b"\"a\";p=1",
            b"\"a b\"",
            b"a b",
            b"a,b",
            b"k\xc3\xa9",
            b"\"\\n\"",
            b"\"tab\there\"",
        ] {
            assert!(
                matches!(parse_key(Some(bad), 255), Err(KeyError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn length_is_bounded_after_unquoting() {
        assert!(parse_key(Some(b"abcd"), 4).is_ok());
        assert!(parse_key(Some(b"\"abcd\""), 4).is_ok());
        assert!(matches!(
            parse_key(Some(b"abcde"), 4),
            Err(KeyError::Malformed(_))
        ));
    }
}
