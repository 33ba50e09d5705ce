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

/// Every limiter a policy names is a `[[ratelimits]]` binding of its environment, configured
/// with the limit and period the policy announces in `RateLimit-Policy`.
#[test]
fn every_limiter_the_policies_name_is_bound_with_the_same_numbers() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/wrangler.toml")).unwrap();
    let doc: toml::Value = toml::from_str(&text).unwrap();
    let policy_file = |env: &str| -> serde_json::Value {
        let path = format!("{}/policy/{env}.toml", env!("CARGO_MANIFEST_DIR"));
        let t: toml::Value = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        serde_json::to_value(t).unwrap()
    };
    let cases = [
        (
            "top level",
            serde_json::to_value(&doc["vars"]["POLICY"]).unwrap(),
            doc.get("ratelimits"),
        ),
        (
            "staging",
            policy_file("staging"),
            doc["env"]["staging"].get("ratelimits"),
        ),
        (
            "production",
            policy_file("production"),
            doc["env"]["production"].get("ratelimits"),
        ),
    ];
    for (env, policy_json, bindings) in cases {
        let policy = keygate::policy::Policy::from_json(&policy_json).unwrap();
        let bindings = bindings
            .and_then(toml::Value::as_array)
            .unwrap_or_else(|| panic!("{env}: no [[ratelimits]]"));
        let tiers = policy
            .limits
            .tiers
            .values()
            .chain(policy.limits.failed_auth.as_ref());
        let mut named = 0;
        for tier in tiers {
            named += 1;
            let b = bindings
                .iter()
                .find(|b| b["name"].as_str() == Some(tier.binding.as_str()))
                .unwrap_or_else(|| {
                    panic!(
                        "{env}: tier {} names binding {}, which is not bound",
                        tier.name, tier.binding
                    )
                });
            assert_eq!(
                b["simple"]["limit"].as_integer(),
                Some(i64::from(tier.limit)),
                "{env}: {}",
                tier.name
            );
            assert_eq!(
                b["simple"]["period"].as_integer(),
                Some(i64::from(tier.period)),
                "{env}: {}",
                tier.name
            );
        }
        assert!(named >= 2, "{env}: the failed-auth limiter and at least one tier");
    }
}
