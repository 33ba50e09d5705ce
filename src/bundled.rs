//! The policy bundled at build time (`build.rs`, `scripts/build.sh --env NAME`): `null` when the
//! build bundled none, and the `POLICY` var applies.

/// JSON text of the bundled policy, or `null`.
pub const POLICY_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/policy.json"));

/// Which policy the worker runs: exactly one of the bundled policy and the `POLICY` var.
pub fn choose(bundled: &str, var: Option<serde_json::Value>) -> Result<serde_json::Value, String> {
    let bundled: serde_json::Value =
        serde_json::from_str(bundled).map_err(|e| format!("the bundled policy is not JSON: {e}"))?;
    let var = var.filter(|v| !(v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty())));
    match (bundled.is_null(), var) {
        (true, Some(v)) => Ok(v),
        (false, None) => Ok(bundled),
        (false, Some(_)) => Err(
            "this build bundles a policy file and the POLICY var is set too: remove one (an environment built with --env uses policy/<env>.toml)"
                .into(),
        ),
        (true, None) => Err("no policy: set [vars.POLICY] or build with a policy file (scripts/build.sh --env NAME)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exactly_one_policy_source() {
        let p = json!({"routes": []});
        assert_eq!(choose("null", Some(p.clone())), Ok(p.clone()));
        assert_eq!(choose(&p.to_string(), None), Ok(p.clone()));
        assert_eq!(choose(&p.to_string(), Some(json!(""))), Ok(p.clone()));
        assert!(choose(&p.to_string(), Some(p.clone())).is_err());
        assert!(choose("null", None).is_err());
        assert!(choose("{", None).is_err());
    }
}
