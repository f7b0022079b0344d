//! Conflict settlement, the same for every kind that can claim something
//! another object also claims (two Upstreams with the same match, two
//! Gateway listeners on the same port and hostname): as in the Gateway API,
//! the oldest object (`creationTimestamp`, then the name) wins, each other
//! one loses to it. Settlement is incremental: only the objects whose claim
//! a change touched are settled again.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hash;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Something resolved on its own that may claim what another one claims.
pub trait Contender: Clone + PartialEq {
    /// What is claimed; two contenders with equal claims conflict.
    type Claim: Hash + Eq + Clone;
    /// Its claim; `None` takes part in no conflict (e.g. not routed).
    fn claim(&self) -> Option<Self::Claim>;
}

/// Oldest `creationTimestamp` first (objects without one last), then name.
pub fn seniority(a: (Option<&Time>, &str), b: (Option<&Time>, &str)) -> Ordering {
    match (a.0, b.0) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
    .then_with(|| a.1.cmp(b.1))
}

/// Recomputes `resolved` (what each contender ends up as) for `names` and
/// for every contender that shares a claim with one of them, or with `old`
/// (the claim one of them had before the change). `created` gives an
/// object's creation time, `lose(name, base, winner)` what the loser
/// `name` becomes.
pub fn settle<'a, R: Contender>(
    base: &BTreeMap<String, R>,
    created: impl Fn(&str) -> Option<&'a Time>,
    resolved: &mut BTreeMap<String, R>,
    names: &[String],
    old: Option<R::Claim>,
    lose: impl Fn(&str, &R, &str) -> R,
) {
    let mut affected: HashSet<R::Claim> = HashSet::new();
    if let Some(c) = old {
        affected.insert(c);
    }
    for n in names {
        if let Some(c) = base.get(n).and_then(Contender::claim) {
            affected.insert(c);
        }
    }
    let mut groups: HashMap<R::Claim, Vec<&str>> = HashMap::new();
    if !affected.is_empty() {
        for (n, r) in base {
            if let Some(c) = r.claim()
                && affected.contains(&c)
            {
                groups.entry(c).or_default().push(n);
            }
        }
    }
    let mut winner_of: HashMap<&str, &str> = HashMap::new();
    let mut todo: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    for members in groups.values_mut() {
        members.sort_by(|a, b| seniority((created(a), a), (created(b), b)));
        for loser in &members[1..] {
            winner_of.insert(loser, members[0]);
        }
        todo.extend(members.iter().copied());
    }
    for n in todo {
        let Some(b) = base.get(n) else {
            resolved.remove(n);
            continue;
        };
        let r = match winner_of.get(n) {
            Some(winner) => lose(n, b, winner),
            None => b.clone(),
        };
        if resolved.get(n) != Some(&r) {
            resolved.insert(n.to_owned(), r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct C {
        claim: Option<&'static str>,
        lost_to: Option<String>,
    }

    impl Contender for C {
        type Claim = &'static str;
        fn claim(&self) -> Option<&'static str> {
            self.claim
        }
    }

    fn at(second: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_767_225_600 + second).unwrap())
    }

    #[test]
    fn the_oldest_then_the_name_wins_and_only_touched_claims_are_settled() {
        let c = |claim| C {
            claim,
            lost_to: None,
        };
        let base: BTreeMap<String, C> = [
            ("b-young", c(Some("x"))),
            ("a-young", c(Some("x"))),
            ("old", c(Some("x"))),
            ("alone", c(Some("y"))),
            ("none", c(None)),
        ]
        .into_iter()
        .map(|(n, c)| (n.to_owned(), c))
        .collect();
        let times: BTreeMap<&str, Time> = [("old", at(1)), ("a-young", at(5)), ("b-young", at(5))]
            .into_iter()
            .collect();
        let created = |n: &str| times.get(n);
        let lose = |_: &str, b: &C, w: &str| C {
            lost_to: Some(w.to_owned()),
            ..b.clone()
        };
        let mut resolved = BTreeMap::new();
        let names: Vec<String> = base.keys().cloned().collect();
        settle(&base, created, &mut resolved, &names, None, lose);
        let lost = |r: &BTreeMap<String, C>, n: &str| r[n].lost_to.clone();
        assert_eq!(lost(&resolved, "old"), None);
        assert_eq!(lost(&resolved, "a-young").as_deref(), Some("old"));
        assert_eq!(lost(&resolved, "b-young").as_deref(), Some("old"));
        assert_eq!(lost(&resolved, "alone"), None);
        assert_eq!(lost(&resolved, "none"), None);

        // `old` leaves: settling it re-settles its claim's group.
        let mut base = base;
        base.remove("old");
        settle(
            &base,
            created,
            &mut resolved,
            &["old".to_owned()],
            Some("x"),
            lose,
        );
        assert!(!resolved.contains_key("old"));
        assert_eq!(lost(&resolved, "a-young"), None, "same age: by name");
        assert_eq!(lost(&resolved, "b-young").as_deref(), Some("a-young"));
        assert!(
            seniority((None, "a"), (Some(&at(9)), "z")).is_gt(),
            "no creation time: last"
        );
    }
}
