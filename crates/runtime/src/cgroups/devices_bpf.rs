//! The cgroup v2 device controller: an eBPF program (BPF_PROG_TYPE_CGROUP_DEVICE) attached to the
//! container's cgroup, consulted by the kernel on every open and mknod of a device node.
//!
//! cgroup v2 has no devices.allow/deny files; the rules become a small program instead (kernel
//! Documentation/admin-guide/cgroup-v2.rst, "Device controller"). The program evaluates the spec's rules
//! with the same meaning as v1's files: the last rule that matches decides, nothing matching is denied. The
//! kernel runs it for the cgroup of the default (v2) hierarchy, so it applies on hybrid hosts too.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::error::{Result, RuntimeError};

/// One rule as v1 writes it: `a`/`b`/`c`, numbers (None = any), access letters, allow or deny.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRule {
    pub kind: char,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: String,
    pub allow: bool,
}

impl DeviceRule {
    /// Parses `c 1:3 rwm` (v1's syntax, also used for the always-allowed defaults).
    pub fn parse(text: &str, allow: bool) -> Option<DeviceRule> {
        let mut parts = text.split_whitespace();
        let kind = parts.next()?.chars().next()?;
        let (major, minor) = parts.next()?.split_once(':')?;
        let number = |n: &str| if n == "*" { Some(None) } else { n.parse().ok().map(Some) };
        Some(DeviceRule { kind, major: number(major)?, minor: number(minor)?, access: parts.next()?.to_owned(), allow })
    }
}

// bpf(2) constants (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

/// One eBPF instruction (struct bpf_insn).
#[derive(Debug, Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn { code, regs: (src << 4) | (dst & 0x0f), off, imm }
    }
    /// dst = *(u32 *)(src + off)
    fn load_word(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(0x61, dst, src, off, 0)
    }
    /// dst = src (64-bit)
    fn mov_reg(dst: u8, src: u8) -> Insn {
        Insn::new(0xbf, dst, src, 0, 0)
    }
    /// dst = imm
    fn mov_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(0xb7, dst, 0, 0, imm)
    }
    fn and_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(0x57, dst, 0, 0, imm)
    }
    fn rsh_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(0x77, dst, 0, 0, imm)
    }
    /// if dst != imm goto +off
    fn jne_imm(dst: u8, imm: i32, off: i16) -> Insn {
        Insn::new(0x55, dst, 0, off, imm)
    }
    fn exit() -> Insn {
        Insn::new(0x95, 0, 0, 0, 0)
    }
}

/// Compiles rules to a program: registers hold the request (r2 type, r3 access, r4 major, r5 minor), rules
/// are tested last first, and the first match returns its verdict.
fn compile(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut program = vec![
        Insn::load_word(6, 1, 0), // r6 = ctx->access_type
        Insn::mov_reg(2, 6),
        Insn::and_imm(2, 0xffff), // r2 = device type
        Insn::mov_reg(3, 6),
        Insn::rsh_imm(3, 16),     // r3 = requested access
        Insn::load_word(4, 1, 4), // r4 = major
        Insn::load_word(5, 1, 8), // r5 = minor
    ];
    for rule in rules.iter().rev() {
        let mut block: Vec<Insn> = Vec::new();
        // Jumps to the next block get their offsets once the block's length is known (placeholder 0).
        let mut jumps = Vec::new();
        match rule.kind {
            'c' => {
                jumps.push(block.len());
                block.push(Insn::jne_imm(2, DEV_CHAR, 0));
            }
            'b' => {
                jumps.push(block.len());
                block.push(Insn::jne_imm(2, DEV_BLOCK, 0));
            }
            _ => {}
        }
        let mut granted = 0;
        for letter in rule.access.chars() {
            granted |= match letter {
                'm' => ACC_MKNOD,
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                _ => 0,
            };
        }
        if granted != ACC_MKNOD | ACC_READ | ACC_WRITE {
            // The rule matches only requests within its access: (requested & !granted) == 0.
            block.push(Insn::mov_reg(7, 3));
            block.push(Insn::and_imm(7, !granted & 0x7));
            jumps.push(block.len());
            block.push(Insn::jne_imm(7, 0, 0));
        }
        if let Some(major) = rule.major {
            jumps.push(block.len());
            block.push(Insn::jne_imm(4, major as i32, 0));
        }
        if let Some(minor) = rule.minor {
            jumps.push(block.len());
            block.push(Insn::jne_imm(5, minor as i32, 0));
        }
        block.push(Insn::mov_imm(0, i32::from(rule.allow)));
        block.push(Insn::exit());
        let length = block.len();
        let unconditional = jumps.is_empty();
        for index in jumps {
            block[index].off = (length - index - 1) as i16;
        }
        program.extend(block);
        if unconditional {
            // Matches every request: what follows could never run, and the verifier refuses dead code.
            return program;
        }
    }
    program.push(Insn::mov_imm(0, 0));
    program.push(Insn::exit());
    program
}

fn bpf(command: libc::c_int, attr: &mut [u64; 16]) -> std::io::Result<i64> {
    // SAFETY: `attr` is a zero-initialised, 128-byte, 8-byte-aligned buffer laid out as the union bpf_attr
    // for `command`; the kernel reads (and for queries writes) at most its size, which is passed along.
    let result = unsafe { libc::syscall(libc::SYS_bpf, command, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    if result < 0 { Err(std::io::Error::last_os_error()) } else { Ok(result) }
}

fn load(program: &[Insn]) -> std::io::Result<OwnedFd> {
    let raw: Vec<u64> = program
        .iter()
        .map(|i| {
            u64::from(i.code)
                | (u64::from(i.regs) << 8)
                | (u64::from(i.off as u16) << 16)
                | (u64::from(i.imm as u32) << 32)
        })
        .collect();
    let license = b"Apache-2.0\0";
    let mut attr = [0u64; 16];
    attr[0] = u64::from(BPF_PROG_TYPE_CGROUP_DEVICE) | ((raw.len() as u64) << 32);
    attr[1] = raw.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    let fd = match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => fd,
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
            // Load again with the verifier's log, so the error says why.
            let mut log = vec![0u8; 64 * 1024];
            attr[3] = 1 | ((log.len() as u64) << 32);
            attr[4] = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &mut attr);
            let text = String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(0)]).into_owned();
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("verifier: {}", text.trim())));
        }
        Err(err) => return Err(err),
    };
    // SAFETY: BPF_PROG_LOAD returned a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The ids of the device programs attached to the cgroup now.
fn attached(cgroup: &OwnedFd) -> std::io::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut attr = [0u64; 16];
    attr[0] = cgroup.as_raw_fd() as u64 | (u64::from(BPF_CGROUP_DEVICE) << 32);
    attr[2] = ids.as_mut_ptr() as u64;
    attr[3] = ids.len() as u64; // prog_cnt (in: capacity, out: count)
    bpf(BPF_PROG_QUERY, &mut attr)?;
    let count = (attr[3] & 0xffff_ffff) as usize;
    Ok(ids[..count.min(ids.len())].to_vec())
}

/// Replaces the device rules of the v2 cgroup `dir` with `rules`.
pub fn apply(dir: &Path, rules: &[DeviceRule]) -> Result<()> {
    let failed = |step: &str| {
        let step = format!("device controller: {step}");
        move |source: std::io::Error| RuntimeError::Cgroup { path: dir.to_owned(), step, source }
    };
    let cgroup: OwnedFd = std::fs::File::open(dir).map_err(failed("open the cgroup"))?.into();
    let previous = attached(&cgroup).map_err(failed("query attached programs"))?;
    let program = load(&compile(rules)).map_err(failed("load the eBPF program (bpf(BPF_PROG_LOAD))"))?;
    let mut attr = [0u64; 16];
    attr[0] = cgroup.as_raw_fd() as u64 | ((program.as_raw_fd() as u64) << 32);
    attr[1] = u64::from(BPF_CGROUP_DEVICE) | (u64::from(BPF_F_ALLOW_MULTI) << 32);
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(failed("attach the eBPF program (bpf(BPF_PROG_ATTACH))"))?;
    // The new rules are in force; only now drop the old ones, so there is no moment without any.
    for id in previous {
        let mut get = [0u64; 16];
        get[0] = u64::from(id);
        let Ok(fd) = bpf(BPF_PROG_GET_FD_BY_ID, &mut get) else { continue };
        // SAFETY: BPF_PROG_GET_FD_BY_ID returned a new descriptor owned by nobody else.
        let old = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut detach = [0u64; 16];
        detach[0] = cgroup.as_raw_fd() as u64 | ((old.as_raw_fd() as u64) << 32);
        detach[1] = u64::from(BPF_CGROUP_DEVICE);
        bpf(BPF_PROG_DETACH, &mut detach).map_err(failed("detach the previous eBPF program"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_compile_with_forward_jumps_to_the_next_rule() {
        let null = DeviceRule::parse("c 1:3 rwm", true).unwrap();
        assert_eq!(null, DeviceRule { kind: 'c', major: Some(1), minor: Some(3), access: "rwm".into(), allow: true });
        let any = DeviceRule::parse("a *:* m", false).unwrap();
        assert_eq!((any.major, any.minor), (None, None));
        let program = compile(&[any, null]);
        // Prologue 7; null's block: type, major, minor, verdict (5); the mknod-only catch-all: access check
        // (3) and verdict (2); the default deny (2).
        assert_eq!(program.len(), 7 + 5 + 5 + 2);
        // A rule that matches everything ends the program: nothing after it could run.
        let deny_all = DeviceRule::parse("a *:* rwm", false).unwrap();
        assert_eq!(compile(std::slice::from_ref(&deny_all)).len(), 7 + 2);
        for (index, insn) in program.iter().enumerate() {
            if insn.code == 0x55 {
                assert!(insn.off > 0 && index + (insn.off as usize) < program.len(), "jump {index} leaves the program");
            }
        }
    }
}
