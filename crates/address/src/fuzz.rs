//! Fuzzing harness, shared by the cargo-fuzz target `address` in `fuzz/`
//! and by the stable test over its seed corpus
//! (`tests/tests/fuzz_corpus.rs`). Panics when an invariant breaks. Not
//! part of the supported API.

use crate::{Address, Domain};

/// Addresses and domains from arbitrary text: parsing never panics, and
/// what parses is canonical, so parsing its own text form gives it back
/// (the store compares these strings; a form that changed on a second
/// pass would make one mailbox two keys).
pub fn address(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    if let Ok(domain) = Domain::parse(&text) {
        check_domain(&domain);
    }
    if let Ok(address) = Address::parse(&text) {
        let shown = address.to_string();
        let again = Address::parse(&shown)
            .unwrap_or_else(|e| panic!("{shown:?} (from {text:?}) does not parse again: {e}"));
        assert_eq!(again, address, "{text:?}");
        check_domain(address.domain());
        let (base, tag) = address.split_plus();
        assert!(address.local_part().starts_with(base));
        if let Some(tag) = tag {
            assert_eq!(base.len() + 1 + tag.len(), address.local_part().len());
        }
    }
}

fn check_domain(domain: &Domain) {
    let again = Domain::parse(domain.as_str())
        .unwrap_or_else(|e| panic!("{domain:?} does not parse again: {e}"));
    assert_eq!(&again, domain);
    assert!(domain.as_str().is_ascii());
    let unicode = domain.to_unicode();
    if let Ok(back) = Domain::parse(&unicode) {
        assert_eq!(&back, domain, "through {unicode:?}");
    }
}
