//! The key use-cases: create, update, revoke, rotate (with the retirement of the old key) and
//! delete, each on a record read fresh from the registry with its lifecycle facts applied.
//! Every record written carries the version it was read at plus one (a new key starts at 1),
//! and every write to an existing key honours `If-Match` first.

use std::rc::Rc;

use serde_json::{Value, json};

use crate::credential::HeaderSource;
use crate::key::{ApiKey, Environment, KeyId};
use crate::problem::{
    Problem, already_rotated, internal_error, invalid_field, key_changed, key_disabled, key_expired,
    key_not_found, key_retired, key_revoked, lookup_error, rotated_concurrently, store_error,
};
use crate::record::{KeyRecord, Retirement, Revocation, Status, slug};
use crate::registry::AdminStore;
use crate::store::LookupError;

use super::actor::Actor;
use super::audit::{AuditAction, changed_fields};
use super::idempotency::if_match;
use super::input::{
    CreateBody, PatchBody, RevokeBody, RotateBody, check_header_size, duration, expiry, no_key_inside,
    parse_body, valid_allowlist, valid_credits, valid_description, valid_environment, valid_group,
    valid_metadata, valid_name, valid_rate_tier, valid_refill, valid_scopes, valid_tenants, valid_text,
};
use super::{AdminContext, AdminRequest, AdminResult, Reply, ok};
use crate::registry::meter::MeterOp;

/// The retired record: its successor, and its expiry capped at the grace end.
fn retirement_of(r: &Retirement, record: &mut KeyRecord) {
    let life = crate::record::Lifecycle {
        retired: Some(r.clone()),
        ..Default::default()
    };
    life.apply(record);
}

impl<S: AdminStore> AdminContext<'_, S> {
    /// Save `next` as the version after `current`: stamped now, at `current`'s version plus
    /// one (the registry refuses anything else, so a write built on a stale read is lost, not
    /// silently applied).
    pub(super) async fn save_next(
        &self,
        current: &KeyRecord,
        mut next: KeyRecord,
    ) -> Result<Rc<KeyRecord>, Problem> {
        next.updated_at = self.now;
        next.version = current.version.saturating_add(1);
        self.records
            .save(next, self.now)
            .await
            .map_err(store_error)?
            .ok_or_else(key_not_found)
    }

    /// The key's record as the admin API acts on it: straight from the store, with every
    /// lifecycle fact applied, and only when the actor can reach it (anything else is
    /// `404 key_not_found`, so the existence of keys beyond reach is not disclosed).
    pub(super) async fn existing(&self, actor: &Actor, raw_id: &str) -> Result<Rc<KeyRecord>, Problem> {
        let id = KeyId::parse(raw_id).ok_or_else(key_not_found)?;
        let record = self
            .records
            .load(&id, self.now)
            .await
            .map_err(lookup_error)?
            .ok_or_else(key_not_found)?;
        let life = self.records.lifecycle(&id).await.map_err(store_error)?;
        if life.deleted {
            return Err(key_not_found());
        }
        let mut merged = (*record).clone();
        let record = if life.apply(&mut merged) {
            Rc::new(merged)
        } else {
            record
        };
        if !actor.sees(&record) {
            return Err(key_not_found());
        }
        Ok(record)
    }

    pub(super) async fn create<H: HeaderSource + ?Sized>(
        &self,
        actor: &Actor,
        req: &AdminRequest<'_, H>,
    ) -> AdminResult {
        let body: CreateBody = parse_body(req, false)?;
        let environment = body
            .environment
            .as_deref()
            .map_or(Ok(Environment::Live), valid_environment)?;
        let name = valid_name(&body.name)?;
        let scopes = valid_scopes(&body.scopes)?;
        let ip_allowlist = valid_allowlist(body.ip_allowlist.as_deref().unwrap_or_default())?;
        let tenants = valid_tenants(body.tenants.unwrap_or_default())?;
        let metadata = valid_metadata(body.metadata)?;
        let expires_at = expiry(body.expires_in.as_ref(), body.expires_at.as_deref(), self.now)?;
        let description = valid_description(body.description)?;
        let group = valid_group(body.group)?;
        let sets_limits = body.rate_tier.is_some() || body.refill.is_some() || body.credits.is_some();
        let rate_tier = valid_rate_tier(&self.gateway.policy, body.rate_tier)?;
        let refill = valid_refill(body.refill)?;
        let credits = body.credits.map(|n| valid_credits("credits", n)).transpose()?;
        let rate_tier = rate_tier.or_else(|| actor.inherited_tier());
        // Metered when given credits or a refill (which then gives the first balance).
        let balance = credits.or(refill.map(|r| r.amount));

        let (key, record) = self.new_key(environment, |id, hash_version, hash| KeyRecord {
            id,
            tag: slug(&name),
            name,
            description,
            group,
            environment,
            scopes,
            ip_allowlist,
            tenants,
            metadata,
            created_at: self.now,
            updated_at: self.now,
            expires_at,
            enabled: true,
            revoked_at: None,
            revoke_reason: None,
            rotated_from: None,
            rotated_to: None,
            hash_version,
            hash,
            version: 1,
            rate_tier,
            metered: balance.is_some(),
            refill,
        })?;
        check_header_size(&record)?;
        if sets_limits {
            actor.may_change_limits(&record.id)?;
        }
        actor.may_manage(&record)?;
        no_key_inside(&record, &self.gateway.policy.key_prefix, self.now)?;
        let record = self.records.put(record, self.now).await.map_err(store_error)?;
        if let Some(b) = balance {
            self.records.store.queue_meter(&record.id, MeterOp::Set(b));
            self.records
                .store
                .queue_meter(&record.id, MeterOp::Refill(refill));
        }
        self.audit(actor, AuditAction::KeyCreate, &record.id, req.client_ip, vec![]);
        ok(201, json!({"key": key.expose(), "record": self.show(&record)?})).map(|r| r.tagged(record.version))
    }

    /// A fresh key and the record built around its id and hash.
    fn new_key(
        &self,
        environment: Environment,
        build: impl FnOnce(KeyId, crate::key::HashVersion, String) -> KeyRecord,
    ) -> Result<(ApiKey, KeyRecord), Problem> {
        let key = ApiKey::generate(&self.gateway.policy.key_prefix, environment)
            .map_err(|_| internal_error("No randomness available."))?;
        let (version, hash) = self.gateway.hasher.hash(&key);
        let record = build(key.id().clone(), version, hash);
        Ok((key, record))
    }

    pub(super) async fn update<H: HeaderSource + ?Sized>(
        &self,
        actor: &Actor,
        raw_id: &str,
        req: &AdminRequest<'_, H>,
    ) -> AdminResult {
        let current = self.existing(actor, raw_id).await?;
        let body: PatchBody = parse_body(req, false)?;
        if current.revoked_at.is_some() {
            return Err(key_revoked("A revoked key cannot be changed."));
        }
        let touches_expiry = body.expires_in.is_some() || body.expires_at.is_some();
        let touches_limits = body.rate_tier.is_some() || body.credits.is_some() || body.refill.is_some();
        if current.rotated_to.is_some() && touches_expiry {
            return Err(key_retired());
        }
        let mut next = (*current).clone();
        if let Some(n) = &body.name {
            next.name = valid_name(n)?;
            next.tag = slug(&next.name);
        }
        if let Some(d) = body.description {
            next.description = valid_description(d)?;
        }
        if let Some(g) = body.group {
            next.group = valid_group(g)?;
        }
        if let Some(s) = &body.scopes {
            next.scopes = valid_scopes(s)?;
        }
        if let Some(l) = &body.ip_allowlist {
            next.ip_allowlist = valid_allowlist(l)?;
        }
        if let Some(t) = body.tenants {
            next.tenants = valid_tenants(t)?;
        }
        if body.metadata.is_some() {
            next.metadata = valid_metadata(body.metadata)?;
        }
        match (&body.expires_in, &body.expires_at) {
            (None, None) => {}
            (Some(Value::Null), None) | (None, Some(None)) | (Some(Value::Null), Some(None)) => {
                next.expires_at = None
            }
            (Some(Value::Null), Some(Some(_))) | (Some(_), Some(None)) => {
                return Err(invalid_field(
                    "expires_in",
                    "Give either `expires_in` or `expires_at`, not both.",
                ));
            }
            (i, a) => next.expires_at = expiry(i.as_ref(), a.as_ref().and_then(|a| a.as_deref()), self.now)?,
        }
        if let Some(e) = body.enabled {
            next.enabled = e;
        }
        if let Some(t) = body.rate_tier {
            next.rate_tier = valid_rate_tier(&self.gateway.policy, t)?;
        }
        // Credits: a number meters the key with that balance, `null` stops metering (and its
        // refill); a refill alone meters the key from the refill's amount.
        let mut meter_ops = Vec::new();
        match body.credits {
            Some(Some(n)) => {
                next.metered = true;
                meter_ops.push(MeterOp::Set(valid_credits("credits", n)?));
            }
            Some(None) => {
                if body.refill.flatten().is_some() {
                    return Err(invalid_field(
                        "refill",
                        "A key without credits has no refill: drop `refill`, or give `credits`.",
                    ));
                }
                next.metered = false;
                next.refill = None;
                meter_ops.push(MeterOp::Remove);
            }
            None => {}
        }
        if let Some(r) = body.refill {
            next.refill = valid_refill(r)?;
            if let Some(r) = next.refill
                && !next.metered
            {
                next.metered = true;
                meter_ops.push(MeterOp::Set(r.amount));
            }
            if next.metered {
                meter_ops.push(MeterOp::Refill(next.refill));
            }
        }
        check_header_size(&next)?;
        if touches_limits {
            actor.may_change_limits(&current.id)?;
        }
        actor.may_manage(&next)?;
        no_key_inside(&next, &self.gateway.policy.key_prefix, self.now)?;
        // The precondition once the request is known to be valid (a malformed request is 4xx
        // whatever the version).
        if_match(req, &current)?;

        let mut changed = changed_fields(&current, &next);
        if next.metered != current.metered {
            changed.push("metered".into());
        }
        // A change of the balance is a change of the key: a new version (so `If-Match` guards
        // it), audited as `key.credits`.
        let credits_set = meter_ops.iter().any(|op| matches!(op, MeterOp::Set(_)));
        for op in meter_ops {
            self.records.store.queue_meter(&current.id, op);
        }
        if credits_set && next.metered == current.metered {
            self.audit(
                actor,
                AuditAction::KeyCredits,
                &current.id,
                req.client_ip,
                vec!["credits_remaining".into()],
            );
            if changed.is_empty() {
                changed.push("credits_remaining".into());
            }
        }
        if changed.is_empty() {
            return ok(200, self.show(&current)?).map(|r| r.tagged(current.version));
        }
        let saved = self.save_next(&current, next).await?;
        let (toggled, others): (Vec<_>, Vec<_>) = changed.into_iter().partition(|f| f == "enabled");
        if !toggled.is_empty() {
            let action = if saved.enabled {
                AuditAction::KeyEnable
            } else {
                AuditAction::KeyDisable
            };
            self.audit(actor, action, &saved.id, req.client_ip, toggled);
        }
        // A balance alone is audited as `key.credits` above.
        let others: Vec<String> = others.into_iter().filter(|f| f != "credits_remaining").collect();
        if !others.is_empty() {
            self.audit(actor, AuditAction::KeyUpdate, &saved.id, req.client_ip, others);
        }
        ok(200, self.show(&saved)?).map(|r| r.tagged(saved.version))
    }

    pub(super) async fn revoke<H: HeaderSource + ?Sized>(
        &self,
        actor: &Actor,
        raw_id: &str,
        req: &AdminRequest<'_, H>,
    ) -> AdminResult {
        let current = self.existing(actor, raw_id).await?;
        let body: RevokeBody = parse_body(req, true)?;
        let reason = body.reason.map(|r| valid_text("reason", r, 512)).transpose()?;
        if_match(req, &current)?;
        if current.revoked_at.is_some() {
            // Irreversible and idempotent: the first revocation stands.
            return ok(200, self.show(&current)?).map(|r| r.tagged(current.version));
        }
        // The fact first, then the record: whatever else writes the record afterwards finds
        // the marker and keeps the revocation.
        let revocation = Revocation { at: self.now, reason };
        self.records
            .mark_revoked(&current.id, &revocation)
            .await
            .map_err(store_error)?;
        let mut next = (*current).clone();
        next.revoked_at = Some(revocation.at);
        next.revoke_reason = revocation.reason;
        let saved = self.save_next(&current, next).await?;
        self.audit(
            actor,
            AuditAction::KeyRevoke,
            &saved.id,
            req.client_ip,
            vec!["revoked_at".into(), "revoke_reason".into()],
        );
        ok(200, self.show(&saved)?).map(|r| r.tagged(saved.version))
    }

    pub(super) async fn rotate<H: HeaderSource + ?Sized>(
        &self,
        actor: &Actor,
        raw_id: &str,
        req: &AdminRequest<'_, H>,
    ) -> AdminResult {
        let old = self.existing(actor, raw_id).await?;
        let body: RotateBody = parse_body(req, true)?;
        let grace = match &body.grace {
            None => 0,
            Some(g) => duration(g, true).ok_or_else(|| {
                invalid_field(
                    "grace",
                    "Use a preset (`1h`, `12h`, `1d`, `5d`, `1y`), `Nm`, `Nh`, `Nd`, or whole seconds (a number or digits), 0 to 100 years.",
                )
            })?,
        };
        if_match(req, &old)?;
        match old.status(self.now) {
            Status::Revoked => return Err(key_revoked("A revoked key cannot be rotated.")),
            Status::Disabled => return Err(key_disabled()),
            Status::Expired => return Err(key_expired()),
            Status::Active => {}
        }
        if let Some(successor) = &old.rotated_to {
            // Rotating again is allowed only when the successor no longer exists (it was
            // deleted); the old key's expiry stays capped, so this never extends its life.
            let exists = match self.records.load(successor, self.now).await {
                Ok(found) => found.is_some(),
                // A successor whose record is corrupt still exists.
                Err(LookupError::Corrupt(_)) => true,
                Err(LookupError::Store(e)) => return Err(store_error(e)),
            };
            if exists {
                return Err(already_rotated());
            }
        }
        // The successor never outlives the old key: it expires when the old key would have.
        let (key, new_record) = self.new_key(old.environment, |id, hash_version, hash| KeyRecord {
            id,
            created_at: self.now,
            updated_at: self.now,
            expires_at: old.expires_at,
            enabled: true,
            revoked_at: None,
            revoke_reason: None,
            rotated_from: Some(old.id.clone()),
            rotated_to: None,
            hash_version,
            hash,
            version: 1,
            ..(*old).clone()
        })?;
        actor.may_manage(&new_record)?;
        let grace_end = self.now.plus_seconds(grace);
        let retirement = Retirement {
            successor: new_record.id.clone(),
            expires_at: old.expires_at.map_or(grace_end, |e| e.min(grace_end)),
        };
        let new_record = self
            .records
            .put(new_record, self.now)
            .await
            .map_err(store_error)?;
        if let Err(p) = self.retire(&old, &retirement).await {
            // Leave no working successor behind a rotation that did not happen.
            let _ = self.records.delete(&new_record.id, self.now).await;
            return Err(p);
        }
        // The balance moves to the successor: the two keys never spend the same credits.
        if new_record.metered
            && let Some(c) = self.records.store.credits(&old, self.now).map_err(store_error)?
        {
            self.records
                .store
                .queue_meter(&new_record.id, MeterOp::Set(c.remaining));
            self.records
                .store
                .queue_meter(&new_record.id, MeterOp::Refill(new_record.refill));
            // The retired key keeps nothing and is never refilled again (`lease` and the view
            // give a retired key no refill).
            self.records.store.queue_meter(&old.id, MeterOp::Set(0));
            self.records.store.queue_meter(&old.id, MeterOp::Refill(None));
        }
        self.audit(
            actor,
            AuditAction::KeyRotate,
            &old.id,
            req.client_ip,
            vec!["expires_at".into(), "rotated_to".into()],
        );
        self.audit(
            actor,
            AuditAction::KeyCreate,
            &new_record.id,
            req.client_ip,
            vec!["rotated_from".into()],
        );
        ok(
            201,
            json!({"key": key.expose(), "record": self.show(&new_record)?}),
        )
        .map(|r| r.tagged(new_record.version))
    }

    /// Retire `old` in favour of the successor named in `retirement`. `Err`: this request
    /// retired nothing, and the caller removes the successor it wrote.
    async fn retire(&self, old: &KeyRecord, retirement: &Retirement) -> Result<(), Problem> {
        // Re-read the old key just before retiring it: a change since it was read must not be
        // undone, nor its old grants handed to the successor. (In the registry nothing
        // interleaves with this request, so this is a guard that never fires there.)
        let fresh = self
            .records
            .load(&old.id, self.now)
            .await
            .map_err(lookup_error)?
            .ok_or_else(key_not_found)?;
        let same_grants = fresh.enabled == old.enabled
            && fresh.revoked_at == old.revoked_at
            && fresh.rotated_to == old.rotated_to
            && fresh.scopes == old.scopes
            && fresh.ip_allowlist == old.ip_allowlist
            && fresh.tenants == old.tenants
            && fresh.expires_at == old.expires_at;
        if !same_grants {
            return Err(key_changed());
        }
        // The fact first, then the old record.
        self.records
            .mark_retired(&old.id, retirement)
            .await
            .map_err(store_error)?;
        let life = self.records.lifecycle(&old.id).await.map_err(store_error)?;
        if life
            .retired
            .as_ref()
            .is_some_and(|r| r.successor != retirement.successor)
        {
            // Another rotation wrote its successor over ours: it won, this one backs out.
            return Err(rotated_concurrently());
        }
        let mut retired = (*fresh).clone();
        retired.updated_at = self.now;
        retired.version = fresh.version.saturating_add(1);
        retirement_of(retirement, &mut retired);
        match self.records.save(retired, self.now).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(key_not_found()),
            Err(e) => Err(store_error(e)),
        }
    }

    pub(super) async fn delete<H: HeaderSource + ?Sized>(
        &self,
        actor: &Actor,
        raw_id: &str,
        req: &AdminRequest<'_, H>,
    ) -> AdminResult {
        let id = KeyId::parse(raw_id).ok_or_else(key_not_found)?;
        match self.existing(actor, raw_id).await {
            Ok(current) => if_match(req, &current)?,
            // The operator's token may purge a corrupt record; an admin key cannot prove its reach.
            Err(p) if p.code == "record_invalid" && matches!(actor, Actor::Token) => {}
            Err(p) => return Err(p),
        }
        // The fact first: a write racing this delete finds it and deletes the record again.
        self.records
            .mark_deleted(&id, self.now)
            .await
            .map_err(store_error)?;
        self.records.delete(&id, self.now).await.map_err(store_error)?;
        self.audit(actor, AuditAction::KeyDelete, &id, req.client_ip, vec![]);
        Ok(Reply {
            status: 204,
            body: None,
            headers: Vec::new(),
        })
    }
}
