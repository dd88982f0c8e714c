//! The Idempotency-Key parser: any header value is accepted as a bounded visible-ASCII key or
//! refused with a reason, and a key written back as an sf-string (or a bare token) parses to
//! itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resetguard_core::idempotency::key::{parse_key, KeyError};
use resetguard_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let max_length = usize::from(input.u8()) + 1;
    let raw = input.rest();
    match parse_key(Some(raw), max_length) {
        Ok(key) => {
            assert!(!key.is_empty() && key.len() <= max_length);
            assert!(key.iter().all(u8::is_ascii_graphic));
            let mut quoted = vec![b'"'];
            for &b in &key {
                if b == b'"' || b == b'\\' {
                    quoted.push(b'\\');
                }
                quoted.push(b);
            }
            quoted.push(b'"');
            assert_eq!(parse_key(Some(&quoted), max_length), Ok(key.clone()));
            let bare = key.iter().all(|b| !matches!(b, b'"' | b',' | b';' | b'\\'));
            if bare {
                assert_eq!(parse_key(Some(&key), max_length), Ok(key));
            }
        }
        Err(KeyError::Missing) => assert!(raw.trim_ascii().is_empty()),
        Err(KeyError::Malformed(why)) => assert!(!why.is_empty()),
    }
    assert_eq!(parse_key(None, max_length), Err(KeyError::Missing));
});
