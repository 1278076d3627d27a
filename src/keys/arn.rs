//! KMS key ARNs (`arn:PARTITION:kms:REGION:ACCOUNT:key/KEY_ID`) and the multi-Region rule.
//!
//! The rule (issue 20): the key a vault records (`.kmsfs/config.json`, key_id) and the key in
//! use name the same key iff the two strings are equal, or both are well-formed KMS *key* ARNs
//! (not alias ARNs) with equal partition, equal account and equal key id, and that key id
//! starts with `mrk-` (a multi-Region key: AWS gives a primary and its replicas one key id and
//! the same key material, so a data key wrapped by one unwraps under any other). Only the
//! region may differ. Everything else is another key: a single-Region key in another region
//! (even with the same UUID: it is a different key), another account, another partition, an
//! alias (it can be pointed anywhere: callers resolve it to a key ARN first), a bare key id,
//! or anything malformed.
//!
//! What a KMS reply names is *not* judged by this rule: it must be exactly the key called.

/// The fields of a well-formed KMS key ARN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyArn<'a> {
    /// `aws`, `aws-cn`, `aws-us-gov`, ...
    pub partition: &'a str,
    /// The key's region, e.g. `us-east-1`.
    pub region: &'a str,
    /// The 12-digit account id.
    pub account: &'a str,
    /// The key id after `key/` (a UUID, or `mrk-` and 32 hex digits).
    pub key_id: &'a str,
}

/// Prefix of every multi-Region key id.
pub const MRK_PREFIX: &str = "mrk-";

impl<'a> KeyArn<'a> {
    /// Parse a KMS key ARN; `None` for anything else (alias ARNs, bare ids, other services,
    /// empty or malformed fields).
    pub fn parse(arn: &'a str) -> Option<KeyArn<'a>> {
        let mut parts = arn.split(':');
        let (prefix, partition, service, region, account, resource) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if parts.next().is_some() || prefix != "arn" || service != "kms" {
            return None;
        }
        let key_id = resource.strip_prefix("key/")?;
        let label = |s: &str| {
            !s.is_empty()
                && !s.starts_with('-')
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        let key_ok = !key_id.is_empty()
            && key_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
        (label(partition) && label(region) && account_ok && key_ok).then_some(KeyArn {
            partition,
            region,
            account,
            key_id,
        })
    }

    /// Whether this is a multi-Region key (primary or replica): `mrk-` and 32 hex digits.
    pub fn is_multi_region(&self) -> bool {
        self.key_id.strip_prefix(MRK_PREFIX).is_some_and(|hex| {
            hex.len() == 32
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    }

    /// Whether `self` and `other` are the same multi-Region key (the region may differ).
    pub fn same_multi_region_key(&self, other: &KeyArn<'_>) -> bool {
        self.is_multi_region()
            && self.partition == other.partition
            && self.account == other.account
            && self.key_id == other.key_id
    }
}

/// The region of a KMS key ARN (`None` unless `arn` is a well-formed key ARN).
pub fn region(arn: &str) -> Option<&str> {
    KeyArn::parse(arn).map(|a| a.region)
}

/// Whether `arn` names a multi-Region key.
pub fn is_multi_region(arn: &str) -> bool {
    KeyArn::parse(arn).is_some_and(|a| a.is_multi_region())
}

/// The rule: does key id `in_use` (what this host's provider resolved) serve as the vault's
/// recorded key `recorded`? Equal ids, or replicas of one multi-Region key (module docs).
pub fn same_key(recorded: &str, in_use: &str) -> bool {
    recorded == in_use || is_replica_of(in_use, recorded)
}

/// Whether `in_use` is another region's replica (or primary) of multi-Region key `recorded`:
/// the same key under the rule, but not the same ARN.
pub fn is_replica_of(in_use: &str, recorded: &str) -> bool {
    match (KeyArn::parse(recorded), KeyArn::parse(in_use)) {
        (Some(r), Some(u)) => r.region != u.region && r.same_multi_region_key(&u),
        _ => false,
    }
}

/// Why two different key ARNs that look alike are still not the same key, for messages.
pub fn why_not_same(recorded: &str, in_use: &str) -> Option<&'static str> {
    let (r, u) = (KeyArn::parse(recorded)?, KeyArn::parse(in_use)?);
    if r.key_id != u.key_id || r.region == u.region {
        return None;
    }
    Some(if !r.is_multi_region() {
        "same key id in another region, but not a multi-Region (mrk-) key: a different key"
    } else if r.partition != u.partition {
        "a multi-Region key is replicated only within its partition"
    } else {
        "a multi-Region key is replicated only within its account"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MRK: &str = "mrk-1234abcd12ab34cd56ef1234567890ab";
    const UUID: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";

    fn arn(partition: &str, region: &str, account: &str, key: &str) -> String {
        format!("arn:{partition}:kms:{region}:{account}:key/{key}")
    }

    #[test]
    fn key_arns_parse_into_their_fields() {
        let a = arn("aws", "us-east-1", "111122223333", MRK);
        assert_eq!(
            KeyArn::parse(&a),
            Some(KeyArn {
                partition: "aws",
                region: "us-east-1",
                account: "111122223333",
                key_id: MRK
            })
        );
        assert_eq!(region(&a), Some("us-east-1"));
        assert!(is_multi_region(&a));
        assert!(!is_multi_region(&arn(
            "aws",
            "us-east-1",
            "111122223333",
            UUID
        )));
        assert_eq!(
            region(&arn("aws-us-gov", "us-gov-west-1", "111122223333", UUID)),
            Some("us-gov-west-1")
        );
    }

    #[test]
    fn malformed_and_non_key_arns_do_not_parse() {
        for bad in [
            "",
            "local:abcd",
            "arn:aws:kms",
            "alias/dr",
            MRK,
            "arn:aws:kms:us-east-1:111122223333:alias/dr",
            "arn:aws:kms:us-east-1:111122223333:key/",
            "arn:aws:kms::111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab",
            "arn:aws:kms:us-east-1::key/mrk-1234abcd12ab34cd56ef1234567890ab",
            "arn::kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab",
            "arn:aws:kms:us-east-1:11112222333:key/mrk-1234abcd12ab34cd56ef1234567890ab",
            "arn:aws:kms:us-east-1:1111222233334:key/mrk-1234abcd12ab34cd56ef1234567890ab",
            "arn:aws:kms:us-east-1:11112222333x:key/mrk-1234abcd12ab34cd56ef1234567890ab",
            "arn:aws:s3:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab",
            "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab:x",
            "arn:aws:kms:us-east-1:111122223333:key/mrk-1234/abcd",
            "arn:aws:kms:US-EAST-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab",
            "ARN:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab",
            " arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab",
        ] {
            assert_eq!(KeyArn::parse(bad), None, "{bad}");
            assert_eq!(region(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_mrk_and_32_hex_digits_is_multi_region() {
        for (id, mrk) in [
            (MRK, true),
            ("mrk-00000000000000000000000000000000", true),
            (UUID, false),
            ("mrk-", false),
            ("mrk-1234abcd", false),
            ("mrk-1234ABCD12AB34CD56EF1234567890AB", false),
            ("mrk-1234abcd12ab34cd56ef1234567890abcd", false),
            ("MRK-1234abcd12ab34cd56ef1234567890ab", false),
            ("xmrk-1234abcd12ab34cd56ef1234567890a", false),
        ] {
            let a = arn("aws", "us-east-1", "111122223333", id);
            assert_eq!(is_multi_region(&a), mrk, "{id}");
        }
    }

    #[test]
    fn a_replica_of_the_same_multi_region_key_is_the_same_key() {
        let primary = arn("aws", "us-east-1", "111122223333", MRK);
        let replica = arn("aws", "us-west-2", "111122223333", MRK);
        let third = arn("aws", "eu-central-1", "111122223333", MRK);
        assert!(same_key(&primary, &primary));
        assert!(same_key(&primary, &replica));
        assert!(
            same_key(&replica, &primary),
            "failback: the primary serves too"
        );
        assert!(same_key(&replica, &third));
        assert!(is_replica_of(&replica, &primary));
        assert!(
            !is_replica_of(&primary, &primary),
            "not a replica of itself"
        );
        let gov = arn("aws-us-gov", "us-gov-west-1", "111122223333", MRK);
        let gov2 = arn("aws-us-gov", "us-gov-east-1", "111122223333", MRK);
        assert!(same_key(&gov, &gov2));
    }

    #[test]
    fn anything_else_is_another_key() {
        let primary = arn("aws", "us-east-1", "111122223333", MRK);
        let not_same = [
            // A single-Region key of the same UUID in another region is another key.
            (
                arn("aws", "us-east-1", "111122223333", UUID),
                arn("aws", "us-west-2", "111122223333", UUID),
            ),
            // Another account, another partition.
            (
                primary.clone(),
                arn("aws", "us-west-2", "444455556666", MRK),
            ),
            (
                primary.clone(),
                arn("aws", "us-east-1", "444455556666", MRK),
            ),
            (
                primary.clone(),
                arn("aws-cn", "cn-north-1", "111122223333", MRK),
            ),
            // Another multi-Region key.
            (
                primary.clone(),
                arn(
                    "aws",
                    "us-west-2",
                    "111122223333",
                    "mrk-ffffabcd12ab34cd56ef1234567890ab",
                ),
            ),
            // Aliases and bare ids are never judged by their text.
            (primary.clone(), "alias/dr".into()),
            (
                primary.clone(),
                "arn:aws:kms:us-west-2:111122223333:alias/dr".into(),
            ),
            (primary.clone(), MRK.into()),
            ("alias/dr".into(), primary.clone()),
            (MRK.into(), primary.clone()),
            // Malformed.
            (
                primary.clone(),
                "arn:aws:kms:us-west-2:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab:"
                    .into(),
            ),
            (
                primary.clone(),
                "arn:aws:kms:us-west-2:1111-2222-3333:key/mrk-1234abcd12ab34cd56ef1234567890ab"
                    .into(),
            ),
            ("local:abcd".into(), primary.clone()),
            (String::new(), primary.clone()),
        ];
        for (recorded, in_use) in &not_same {
            assert!(!same_key(recorded, in_use), "{recorded} vs {in_use}");
            assert!(!same_key(in_use, recorded), "{in_use} vs {recorded}");
            assert!(!is_replica_of(in_use, recorded), "{in_use} vs {recorded}");
        }
        // Equal strings stay the same key whatever they are (local keys, bare ids).
        assert!(same_key("local:abcd", "local:abcd"));
    }

    #[test]
    fn near_misses_say_why() {
        let east = arn("aws", "us-east-1", "111122223333", UUID);
        let west = arn("aws", "us-west-2", "111122223333", UUID);
        assert!(why_not_same(&east, &west).is_some_and(|w| w.contains("multi-Region")));
        let mrk = arn("aws", "us-east-1", "111122223333", MRK);
        let other_account = arn("aws", "us-west-2", "444455556666", MRK);
        assert!(why_not_same(&mrk, &other_account).is_some_and(|w| w.contains("account")));
        assert_eq!(why_not_same(&mrk, "alias/dr"), None);
    }
}
