//! Pod CIDR substitution: how a configuration asks for the node's pod CIDR.
//!
//! kubelet hands the node's pod CIDR to the runtime with UpdateRuntimeConfig (one CIDR, or two separated by a
//! comma on dual-stack nodes). A configuration that wants it writes a placeholder inside any JSON string; at
//! ADD berth replaces it and caches the substituted configuration, so DEL uses exactly what ADD used:
//!
//! | placeholder | becomes |
//! |---|---|
//! | `{{podCIDR}}` | the first CIDR kubelet gave (`10.244.1.0/24`) |
//! | `{{podCIDRv4}}` | the first IPv4 CIDR |
//! | `{{podCIDRv6}}` | the first IPv6 CIDR |
//!
//! Typically `"ipam": {"type": "host-local", "ranges": [[{"subnet": "{{podCIDR}}"}]]}`. The spelling follows
//! the `{{.PodCIDR}}` of containerd's config template, without the Go template dot, because berth substitutes
//! strings rather than running a template language. A configuration using a placeholder while no pod CIDR is
//! known fails ADD with a message that says so, before any plugin runs.

use serde_json::Value;

const PLACEHOLDERS: [&str; 3] = ["{{podCIDR}}", "{{podCIDRv4}}", "{{podCIDRv6}}"];

/// The first placeholder `config` uses, if any.
pub fn wants_pod_cidr(config: &Value) -> Option<&'static str> {
    let mut found = None;
    visit_strings(config, &mut |text| {
        if found.is_none() {
            found = PLACEHOLDERS.into_iter().find(|p| text.contains(p));
        }
    });
    found
}

/// `config` with every placeholder replaced; `Err(placeholder)` names one that `pod_cidr` cannot fill.
pub fn substitute(config: &Value, pod_cidr: Option<&str>) -> Result<Value, &'static str> {
    let cidrs: Vec<&str> = pod_cidr.unwrap_or("").split(',').map(str::trim).filter(|c| !c.is_empty()).collect();
    let first = cidrs.first().copied();
    let v4 = cidrs.iter().copied().find(|c| !c.contains(':'));
    let v6 = cidrs.iter().copied().find(|c| c.contains(':'));
    let values = [first, v4, v6];
    let mut config = config.clone();
    let mut missing = None;
    rewrite_strings(&mut config, &mut |text| {
        for (placeholder, value) in PLACEHOLDERS.into_iter().zip(values) {
            if text.contains(placeholder) {
                match value {
                    Some(value) => *text = text.replace(placeholder, value),
                    None => missing = missing.or(Some(placeholder)),
                }
            }
        }
    });
    match missing {
        Some(placeholder) => Err(placeholder),
        None => Ok(config),
    }
}

fn visit_strings(value: &Value, visit: &mut impl FnMut(&str)) {
    match value {
        Value::String(text) => visit(text),
        Value::Array(items) => items.iter().for_each(|item| visit_strings(item, visit)),
        Value::Object(map) => map.values().for_each(|item| visit_strings(item, visit)),
        _ => {}
    }
}

fn rewrite_strings(value: &mut Value, rewrite: &mut impl FnMut(&mut String)) {
    match value {
        Value::String(text) => rewrite(text),
        Value::Array(items) => items.iter_mut().for_each(|item| rewrite_strings(item, rewrite)),
        Value::Object(map) => map.values_mut().for_each(|item| rewrite_strings(item, rewrite)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_are_filled_per_family() {
        let config = json!({"plugins": [{"ipam": {"ranges": [
            [{"subnet": "{{podCIDRv4}}"}], [{"subnet": "{{podCIDRv6}}"}]
        ]}, "note": "first is {{podCIDR}}"}]});
        assert_eq!(wants_pod_cidr(&config), Some("{{podCIDRv4}}"));
        let filled = substitute(&config, Some("10.244.1.0/24, fd00:1::/64")).unwrap();
        assert_eq!(
            filled,
            json!({"plugins": [{"ipam": {"ranges": [
                [{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:1::/64"}]
            ]}, "note": "first is 10.244.1.0/24"}]})
        );
        assert_eq!(wants_pod_cidr(&filled), None);
    }

    #[test]
    fn a_missing_cidr_names_the_placeholder_and_configs_without_one_pass_unchanged() {
        let config = json!({"subnet": "{{podCIDRv6}}"});
        assert_eq!(substitute(&config, Some("10.244.1.0/24")), Err("{{podCIDRv6}}"));
        assert_eq!(substitute(&json!({"subnet": "{{podCIDR}}"}), None), Err("{{podCIDR}}"));
        let plain = json!({"subnet": "10.1.0.0/16"});
        assert_eq!(substitute(&plain, None).unwrap(), plain);
    }
}
