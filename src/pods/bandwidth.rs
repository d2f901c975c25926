//! Traffic shaping from the pod's annotations: `kubernetes.io/ingress-bandwidth` and
//! `kubernetes.io/egress-bandwidth` (Kubernetes quantities in bits per second, such as `10M` or `1Gi`)
//! become CNI's `bandwidth` capability, which the `bandwidth` plugin applies when a network chains it.

use std::collections::BTreeMap;

use berth_cni::Bandwidth;

pub const INGRESS: &str = "kubernetes.io/ingress-bandwidth";
pub const EGRESS: &str = "kubernetes.io/egress-bandwidth";

/// The burst given with a rate: the largest the plugin accepts, as containerd and CRI-O give (kubelet
/// has no burst annotation).
const BURST: u64 = u32::MAX as u64;

/// The pod's bandwidth limits, or None when it has neither annotation. A value that is not a quantity of
/// at least 1 bit/s is refused with the annotation's name.
pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Option<Bandwidth>, String> {
    let rate = |key: &str| -> Result<Option<u64>, String> {
        match annotations.get(key) {
            None => Ok(None),
            Some(text) => match parse_quantity(text) {
                Some(bits) if bits >= 1 => Ok(Some(bits)),
                _ => Err(format!(
                    "annotation {key}: {text:?} is not a bandwidth (a quantity of bits per second such as 10M)"
                )),
            },
        }
    };
    let ingress = rate(INGRESS)?;
    let egress = rate(EGRESS)?;
    if ingress.is_none() && egress.is_none() {
        return Ok(None);
    }
    Ok(Some(Bandwidth {
        ingress_rate: ingress,
        ingress_burst: ingress.map(|_| BURST),
        egress_rate: egress,
        egress_burst: egress.map(|_| BURST),
    }))
}

/// A Kubernetes quantity (`resource.Quantity`): a decimal number with an optional SI (`k`, `M`, `G`, `T`,
/// `P`, `E`) or binary (`Ki` ... `Ei`) suffix, rounded up to a whole number.
fn parse_quantity(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    if number.is_empty() || number.matches('.').count() > 1 {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let bits = (value * multiplier).ceil();
    (bits.is_finite() && bits <= u64::MAX as f64).then_some(bits as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse_quantity("10M"), Some(10_000_000));
        assert_eq!(parse_quantity("1Gi"), Some(1 << 30));
        assert_eq!(parse_quantity("1.5k"), Some(1500));
        assert_eq!(parse_quantity("100"), Some(100));
        for bad in ["", "M", "10X", "1..2M", "-5M", "10 M"] {
            assert_eq!(parse_quantity(bad), None, "{bad}");
        }
    }

    #[test]
    fn annotations_become_the_bandwidth_capability() {
        let mut annotations = BTreeMap::new();
        assert_eq!(from_annotations(&annotations).unwrap(), None);
        annotations.insert(INGRESS.to_owned(), "1M".to_owned());
        let bandwidth = from_annotations(&annotations).unwrap().unwrap();
        assert_eq!((bandwidth.ingress_rate, bandwidth.ingress_burst), (Some(1_000_000), Some(BURST)));
        assert_eq!((bandwidth.egress_rate, bandwidth.egress_burst), (None, None));
        annotations.insert(EGRESS.to_owned(), "fast".to_owned());
        let err = from_annotations(&annotations).unwrap_err();
        assert!(err.contains(EGRESS) && err.contains("fast"), "{err}");
    }
}
