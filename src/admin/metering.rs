//! What the admin API shows and changes of a key's use: its credits (set, top up, refill), its
//! rate tier, `last_used_at`, and its usage per day. The balance lives in the registry beside
//! the record (`crate::registry::meter`); the record holds whether the key is metered, its
//! refill and its tier.

use serde_json::{Value, json};

use crate::credential::HeaderSource;
use crate::problem::{Problem, invalid_field, invalid_query, store_error};
use crate::record::KeyRecord;
use crate::registry::AdminStore;
use crate::registry::meter::MeterOp;
use crate::usage::{MAX_RANGE_DAYS, daily, day_of, day_string, parse_day};

use super::actor::Actor;
use super::audit::AuditAction;
use super::idempotency::if_match;
use super::input::{CreditsBody, Query, parse_body, valid_credits};
use super::{AdminContext, AdminRequest, AdminResult, ok};

/// The default range of `GET /admin/keys/{id}/usage`: the last 30 days.
const DEFAULT_RANGE_DAYS: i64 = 30;

impl<S: AdminStore> AdminContext<'_, S> {
    /// The public view of a record, with what the registry knows beside it: credits (for a
    /// metered key) and when it was last used.
    pub(super) fn show(&self, record: &KeyRecord) -> Result<Value, Problem> {
        let store = self.records.store;
        let mut v = record.view(self.now);
        let credits = if record.metered {
            store.credits(record, self.now).map_err(store_error)?
        } else {
            None
        };
        let last_used = store.last_used_at(&record.id).map_err(store_error)?;
        if let Value::Object(m) = &mut v {
            m.insert("credits_remaining".into(), json!(credits.map(|c| c.remaining)));
            m.insert("credits_leased".into(), json!(credits.map(|c| c.leased)));
            m.insert(
                "next_refill_at".into(),
                json!(credits.and_then(|c| c.next_refill_at).map(|t| t.to_rfc3339())),
            );
            m.insert("last_used_at".into(), json!(last_used.map(|t| t.to_rfc3339())));
        }
        Ok(v)
    }

    /// `POST /admin/keys/{id}/credits` with `{"add": n}` or `{"set": n}`.
    pub(super) async fn change_credits<H: HeaderSource + ?Sized>(
        &self,
        actor: &Actor,
        raw_id: &str,
        req: &AdminRequest<'_, H>,
    ) -> AdminResult {
        let record = self.existing(actor, raw_id).await?;
        let body: CreditsBody = parse_body(req, false)?;
        let op = match (body.add, body.set) {
            (Some(n), None) => MeterOp::Add(valid_credits("add", n)?),
            (None, Some(n)) => MeterOp::Set(valid_credits("set", n)?),
            _ => return Err(invalid_field("", "Give exactly one of `add` and `set`.")),
        };
        if !record.metered {
            return Err(invalid_field(
                "",
                "This key is not metered. Give it credits with PATCH {\"credits\": n} first.",
            ));
        }
        actor.may_change_limits(&record.id)?;
        actor.may_manage(&record)?;
        if_match(req, &record)?;
        self.records.store.queue_meter(&record.id, op);
        // A new version, so that `If-Match` orders concurrent changes of the balance.
        let saved = self.save_next(&record, (*record).clone()).await?;
        self.audit(
            actor,
            AuditAction::KeyCredits,
            &saved.id,
            req.client_ip,
            vec!["credits_remaining".into()],
        );
        ok(200, self.show(&saved)?).map(|r| r.tagged(saved.version))
    }

    /// `GET /admin/keys/{id}/usage?from=YYYY-MM-DD&to=YYYY-MM-DD`: daily buckets, every day of
    /// the range present (default: the last 30 days, up to today).
    pub(super) async fn usage(&self, actor: &Actor, raw_id: &str, query: &Query) -> AdminResult {
        let record = self.existing(actor, raw_id).await?;
        let day = |name: &str| -> Result<Option<i64>, Problem> {
            query
                .get(name)
                .map(|s| {
                    parse_day(s)
                        .ok_or_else(|| invalid_query(name, format!("`{name}` must be a date, YYYY-MM-DD.")))
                })
                .transpose()
        };
        let to = day("to")?.unwrap_or_else(|| day_of(self.now));
        let from = day("from")?.unwrap_or((to - (DEFAULT_RANGE_DAYS - 1)).max(0));
        if from > to {
            return Err(invalid_query("from", "`from` is after `to`.".into()));
        }
        if to - from >= MAX_RANGE_DAYS {
            return Err(invalid_query(
                "from",
                format!("At most {MAX_RANGE_DAYS} days per request."),
            ));
        }
        let rows = self
            .records
            .store
            .usage(&record.id, from, to)
            .map_err(store_error)?;
        let days = daily(from, to, &rows);
        let (allowed, denied) = days.iter().fold((0u64, 0u64), |(a, d), x| {
            (a.saturating_add(x.allowed), d.saturating_add(x.denied))
        });
        ok(
            200,
            json!({
                "key_id": record.id,
                "from": day_string(from),
                "to": day_string(to),
                "allowed": allowed,
                "denied": denied,
                "days": days,
            }),
        )
    }
}
