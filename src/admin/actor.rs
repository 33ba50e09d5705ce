//! Who is acting: the operator's `ADMIN_TOKEN` or an admin key. Authentication, the scope an
//! endpoint requires, and the reach of an admin key (which keys it may see and manage).

use std::rc::Rc;

use crate::credential::{self, HeaderSource};
use crate::decide::{Denial, key_ip_allowed};
use crate::key::secret_eq;
use crate::problem::{Problem, admin_key_lacks_scope, invalid_admin_credential, scope_escalation};
use crate::record::KeyRecord;
use crate::registry::AdminStore;

use super::{AdminContext, AdminRequest, MIN_ADMIN_TOKEN_CHARS};

/// Who is acting: the operator's token, or an admin key.
pub(super) enum Actor {
    Token,
    Key(Rc<KeyRecord>),
}

impl Actor {
    pub(super) fn name(&self) -> String {
        match self {
            Actor::Token => "admin_token".to_owned(),
            Actor::Key(r) => r.id.to_string(),
        }
    }

    pub(super) fn require(&self, scope: &str) -> Result<(), Problem> {
        let Actor::Key(r) = self else { return Ok(()) };
        let allowed = crate::scope::Scope::parse(scope)
            .map(|s| crate::scope::granted(&r.scopes, &s))
            .unwrap_or(false);
        if allowed {
            Ok(())
        } else {
            Err(admin_key_lacks_scope(scope))
        }
    }

    /// An admin key may only create or change keys inside its own reach; see [`reach`].
    pub(super) fn may_manage(&self, target: &KeyRecord) -> Result<(), Problem> {
        let Actor::Key(me) = self else { return Ok(()) };
        reach(me, target).map_err(scope_escalation)
    }

    /// Changing a key's credits, refill or rate tier: `admin:limits:write`, and never on the
    /// admin key itself (a key cannot lift its own limits).
    pub(super) fn may_change_limits(&self, target: &crate::key::KeyId) -> Result<(), Problem> {
        self.require(super::SCOPE_LIMITS)?;
        match self {
            Actor::Key(me) if me.id == *target => Err(scope_escalation(
                "An admin key cannot change its own credits, refill or rate tier.".to_owned(),
            )),
            _ => Ok(()),
        }
    }

    /// The rate tier a key created by this actor gets when the request names none: an admin
    /// key's own (a key it creates is never less limited than itself).
    pub(super) fn inherited_tier(&self) -> Option<String> {
        match self {
            Actor::Key(me) => me.rate_tier.clone(),
            Actor::Token => None,
        }
    }

    /// Reads follow the same reach: an admin key sees only keys it could manage.
    pub(super) fn sees(&self, target: &KeyRecord) -> bool {
        match self {
            Actor::Token => true,
            Actor::Key(me) => reach(me, target).is_ok(),
        }
    }
}

/// Is `target` inside the reach of the admin key `me`, on every axis? `Err` says which axis
/// is not, for the `403 scope_escalation` detail.
/// - scopes: every grant covered by one of `me`'s (wildcard-aware);
/// - environment: the same;
/// - tenants: an empty list means all tenants, so when `me` has tenants, `target` must have
///   some, all among them;
/// - IP allowlist: an empty list is wider than any list, so when `me` has one, `target` must
///   have one whose every network lies inside one of `me`'s;
/// - expiry: when `me` expires, `target` must expire no later (no expiry is later than any);
/// - limits: when `me` has a rate tier, `target` has the same; when `me` is metered, so is
///   `target` (an admin key cannot escape its limits through the keys it manages).
pub fn reach(me: &KeyRecord, target: &KeyRecord) -> Result<(), String> {
    if target.environment != me.environment {
        return Err(format!(
            "An admin key of environment `{}` cannot manage `{}` keys.",
            me.environment.as_str(),
            target.environment.as_str()
        ));
    }
    if let Some(g) = target
        .scopes
        .iter()
        .find(|g| !me.scopes.iter().any(|mine| mine.covers(g)))
    {
        return Err(format!(
            "The grant `{g}` is not covered by this admin key's own grants."
        ));
    }
    if !me.tenants.is_empty() {
        if target.tenants.is_empty() {
            return Err(
                "This admin key is bound to tenants; a key without tenants (all tenants) is beyond it."
                    .to_owned(),
            );
        }
        if let Some(t) = target.tenants.iter().find(|t| !me.tenants.contains(t)) {
            return Err(format!("The tenant `{t}` is not among this admin key's tenants."));
        }
    }
    if !target.ip_allowlist.within(&me.ip_allowlist) {
        return Err(
            "Every IP allowlist entry must lie inside this admin key's own allowlist (an empty list allows any address)."
                .to_owned(),
        );
    }
    if let Some(mine) = me.expires_at
        && target.expires_at.is_none_or(|t| t > mine)
    {
        return Err(format!(
            "This admin key expires at {mine}; a key it manages must expire no later."
        ));
    }
    if let Some(tier) = &me.rate_tier
        && target.rate_tier.as_ref() != Some(tier)
    {
        return Err(format!(
            "This admin key is on rate tier `{tier}`; a key it manages must be on the same tier."
        ));
    }
    if me.metered && !target.metered {
        return Err("This admin key is metered; a key it manages must be metered too.".to_owned());
    }
    Ok(())
}

/// Why the admin API is off with this `ADMIN_TOKEN`, if it is: one line for the edge's log.
pub fn admin_token_weakness(token: Option<&str>) -> Option<&'static str> {
    match token {
        None | Some("") => Some("ADMIN_TOKEN is not set; the admin API is disabled"),
        Some(t) if t.chars().count() < MIN_ADMIN_TOKEN_CHARS => Some(
            "ADMIN_TOKEN is shorter than 32 characters; the admin API is disabled until a longer one is set",
        ),
        Some(_) => None,
    }
}

impl<S: AdminStore> AdminContext<'_, S> {
    pub(super) async fn authenticate<H: HeaderSource + ?Sized>(
        &self,
        req: &AdminRequest<'_, H>,
        token: &str,
    ) -> Result<Actor, Problem> {
        let policy = &self.gateway.policy;
        let (credential, _) = credential::extract(&policy.credentials, req.headers, None);
        if let Ok(c) = &credential
            && secret_eq(c, token)
        {
            return Ok(Actor::Token);
        }
        let record = self
            .gateway
            .authenticate(credential, &self.records, self.now)
            .await
            .map_err(|d| match d {
                // Not a well-formed key, or not a valid one: to an admin caller these say only
                // that the credential is wrong (a mistyped token is not "a malformed API key").
                Denial::MalformedKey | Denial::InvalidKey => invalid_admin_credential(&policy.realm),
                d => Problem::from_denial(&d, &policy.realm),
            })?;
        if !key_ip_allowed(&record, req.client_ip) {
            return Err(Problem::from_denial(&Denial::IpNotAllowed, &policy.realm));
        }
        Ok(Actor::Key(record))
    }
}
