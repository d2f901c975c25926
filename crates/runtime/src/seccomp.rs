//! Seccomp: the spec's `linux.seccomp` profile compiled to a BPF filter with libseccomp.
//!
//! The filter is built (names resolved, rules checked) while the container is being set up, so a bad
//! profile fails `create`; it is loaded as late as the spec allows (see `init`), because after loading
//! it, any syscall the profile refuses is refused to berth's own setup code too.

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};

use crate::error::{Result, RuntimeError};

fn failed(step: impl Into<String>) -> impl FnOnce(libseccomp::error::SeccompError) -> RuntimeError {
    let step = step.into();
    move |err| RuntimeError::Setup(format!("seccomp: {step}: {err}"))
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction> {
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => ScmpAction::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno.unwrap_or(libc::EPERM as u32) as i32),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno.unwrap_or(libc::EPERM as u32) as u16),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(RuntimeError::Unsupported("seccomp SCMP_ACT_NOTIFY (user notification)".into()));
        }
    })
}

fn arch(arch: Arch) -> Option<ScmpArch> {
    Some(match arch {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        _ => return None,
    })
}

fn compare(op: LinuxSeccompOperator, index: usize, value: u64, value_two: Option<u64>) -> ScmpArgCompare {
    let index = index as u32;
    match op {
        LinuxSeccompOperator::ScmpCmpNe => ScmpArgCompare::new(index, ScmpCompareOp::NotEqual, value),
        LinuxSeccompOperator::ScmpCmpLt => ScmpArgCompare::new(index, ScmpCompareOp::Less, value),
        LinuxSeccompOperator::ScmpCmpLe => ScmpArgCompare::new(index, ScmpCompareOp::LessOrEqual, value),
        LinuxSeccompOperator::ScmpCmpEq => ScmpArgCompare::new(index, ScmpCompareOp::Equal, value),
        LinuxSeccompOperator::ScmpCmpGe => ScmpArgCompare::new(index, ScmpCompareOp::GreaterEqual, value),
        LinuxSeccompOperator::ScmpCmpGt => ScmpArgCompare::new(index, ScmpCompareOp::Greater, value),
        // runtime-spec: value is the mask, valueTwo the value the masked argument must equal.
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            ScmpArgCompare::new(index, ScmpCompareOp::MaskedEqual(value), value_two.unwrap_or(0))
        }
    }
}

/// Compiles a profile. Syscall names this libseccomp does not know are skipped, as runc does, so one
/// profile serves kernels old and new.
pub fn build(profile: &LinuxSeccomp) -> Result<ScmpFilterContext> {
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut filter = ScmpFilterContext::new(default).map_err(failed("create the filter"))?;
    // no_new_privs is the spec's decision (process.noNewPrivileges), not libseccomp's.
    filter.set_ctl_nnp(false).map_err(failed("leave no_new_privs alone"))?;
    for spec_arch in profile.architectures().iter().flatten() {
        if let Some(arch) = arch(*spec_arch) {
            match filter.add_arch(arch) {
                Ok(_) => {}
                // The native architecture is in every filter already.
                Err(err) if err.errno() == Some(libseccomp::error::SeccompErrno::EEXIST) => {}
                Err(err) => return Err(failed(format!("add architecture {spec_arch:?}"))(err)),
            }
        }
    }
    for rule in profile.syscalls().iter().flatten() {
        let rule_action = action(rule.action(), rule.errno_ret())?;
        if rule_action == default {
            // libseccomp refuses rules that repeat the default action; they change nothing anyway.
            continue;
        }
        let conditions: Vec<ScmpArgCompare> = rule
            .args()
            .iter()
            .flatten()
            .map(|arg| compare(arg.op(), arg.index(), arg.value(), arg.value_two()))
            .collect();
        let mut indexes: Vec<usize> = rule.args().iter().flatten().map(|a| a.index()).collect();
        indexes.sort_unstable();
        let distinct = indexes.windows(2).all(|w| w[0] != w[1]);
        for name in rule.names() {
            let Ok(syscall) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let add = |filter: &mut ScmpFilterContext, conditions: &[ScmpArgCompare]| {
                let result = if conditions.is_empty() {
                    filter.add_rule(rule_action, syscall)
                } else {
                    filter.add_rule_conditional(rule_action, syscall, conditions)
                };
                result.map(|_| ()).map_err(failed(format!("add the rule for {name}")))
            };
            if distinct {
                add(&mut filter, &conditions)?;
            } else {
                // Several conditions on one argument cannot be ANDed by libseccomp; as runc does, each becomes
                // a rule of its own (so they are ORed).
                for condition in &conditions {
                    add(&mut filter, std::slice::from_ref(condition))?;
                }
            }
        }
    }
    Ok(filter)
}

/// Loads a compiled filter into the calling process (inherited across execve).
pub fn load(filter: &ScmpFilterContext) -> Result<()> {
    filter.load().map_err(failed("load the filter"))
}
