//! Status conditions (`metav1.Condition`) as every kind's status carries
//! them: one helper that keeps `lastTransitionTime` while a condition's
//! status does not change, so an unchanged state computes an identical
//! status and the status writer has nothing to write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// `"True"` or `"False"`.
pub fn truth(ok: bool) -> &'static str {
    if ok { "True" } else { "False" }
}

/// One condition. `previous` are the conditions the object shows now: the
/// transition time of a condition of the same type and status is kept,
/// otherwise it is `now`.
pub fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    previous: &[Condition],
    now: &Time,
) -> Condition {
    let last = previous
        .iter()
        .find(|c| c.type_ == type_)
        .filter(|c| c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_767_225_600 + second).unwrap())
    }

    #[test]
    fn transition_time_is_kept_while_the_status_is_unchanged() {
        let first = condition("Accepted", "True", "Accepted", "ok", Some(1), &[], &at(0));
        assert_eq!(first.last_transition_time, at(0));
        let prev = [first];
        let same = condition(
            "Accepted",
            "True",
            "Accepted",
            "new message",
            Some(2),
            &prev,
            &at(9),
        );
        assert_eq!(same.last_transition_time, at(0), "same status: kept");
        assert_eq!(same.observed_generation, Some(2));
        let flipped = condition("Accepted", "False", "Invalid", "no", Some(2), &prev, &at(9));
        assert_eq!(flipped.last_transition_time, at(9), "status changed: now");
        let other = condition("Programmed", "True", "Programmed", "", None, &prev, &at(9));
        assert_eq!(other.last_transition_time, at(9), "another type: now");
        assert_eq!((truth(true), truth(false)), ("True", "False"));
    }
}
