//! The filter's own JSON reader (it replaced serde_json for the plugin configuration, route
//! overrides and problem bodies), differentially against serde_json: the same documents are JSON
//! to both (serde_json also refuses numbers beyond f64, which are text to this reader), what it
//! writes reads back to the same value, and documents without numbers print exactly as
//! serde_json prints them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resetguard_core::json;

fn has_number(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(_) => true,
        serde_json::Value::Array(items) => items.iter().any(has_number),
        serde_json::Value::Object(map) => map.values().any(has_number),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let ours = json::parse(data);
    let theirs = serde_json::from_slice::<serde_json::Value>(data);
    match (&ours, &theirs) {
        (Ok(_), Ok(_)) | (Err(_), Err(_)) => {}
        (Ok(_), Err(e)) => assert!(
            e.to_string().contains("number out of range"),
            "accepted what serde_json refuses ({e}): {:?}",
            String::from_utf8_lossy(data)
        ),
        (Err(e), Ok(_)) => panic!(
            "refused what serde_json accepts ({e}): {:?}",
            String::from_utf8_lossy(data)
        ),
    }
    let Ok(value) = ours else {
        return;
    };
    let written = value.to_string();
    assert_eq!(
        json::parse(written.as_bytes()).as_ref(),
        Ok(&value),
        "{written}"
    );
    if let Ok(theirs) = theirs {
        if !has_number(&theirs) {
            assert_eq!(written, theirs.to_string());
        }
    }
});
