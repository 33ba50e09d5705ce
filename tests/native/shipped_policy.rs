//! The policy shipped in wrangler.toml must be valid: the worker would otherwise deny everything.

use keygate::policy::Policy;

fn shipped() -> serde_json::Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/wrangler.toml")).unwrap();
    let doc: toml::Value = toml::from_str(&text).unwrap();
    serde_json::to_value(&doc["vars"]["POLICY"]).unwrap()
}

#[test]
fn the_shipped_policy_is_valid() {
    let policy =
        Policy::from_json(&shipped()).unwrap_or_else(|e| panic!("wrangler.toml POLICY is invalid: {e}"));
    assert!(policy.routes.len() >= 5);
    assert!(policy.routes.iter().any(|r| r.public));
    assert!(policy.routes.iter().any(|r| !r.ip_allowlist.is_empty()));
}

#[test]
fn a_broken_copy_of_it_is_rejected() {
    let mut p = shipped();
    p["routes"][0]["ip_allowlist"] = serde_json::json!(["10.0.0.1/8"]);
    assert!(Policy::from_json(&p).is_err());
    let mut p = shipped();
    p["routes"][0]["surprise"] = serde_json::json!(true);
    assert!(Policy::from_json(&p).is_err());
}
