//! Status conditions, as both controllers write them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition of `type_`, `True` when `ok`; its time and generation are
/// filled in by [`settle`].
pub fn condition(type_: &str, ok: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(Default::default()),
        observed_generation: None,
    }
}

/// Stamps `new` with `generation`, and with `now` as the transition time of
/// each condition whose status differs from `old`'s; the others keep their
/// old time. So an unchanged world computes an unchanged status, and the
/// controller has nothing to write.
pub fn settle(
    new: Vec<Condition>,
    old: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    new.into_iter()
        .map(|mut c| {
            c.observed_generation = generation;
            c.last_transition_time = old
                .iter()
                .find(|o| o.type_ == c.type_ && o.status == c.status)
                .map(|o| o.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            c
        })
        .collect()
}
