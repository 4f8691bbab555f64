//! Kernel keyring arrangements for the keychain tests, made for real with keyctl(2) and
//! seccomp(2) in the child between fork and exec: a process with a session keyring of its
//! own (as `keyctl session -` or a fresh PAM login gives), another program of the same user
//! that linked the persistent keyring into its session keyring, and a process whose keyctl
//! calls are blocked (as container seccomp profiles do).
//!
//! It owns only the children it starts; it must never change the keyrings of the test
//! process itself or unlink anything it did not create.

use anyhow::{Context, Result};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
const KEYCTL_GET_PERSISTENT: libc::c_long = 22;
const KEY_SPEC_SESSION_KEYRING: libc::c_long = -3;

/// The child starts with a new, empty session keyring of its own instead of inheriting ours.
pub fn in_new_session_keyring(cmd: &mut Command) -> &mut Command {
    // SAFETY: the hook only makes a raw syscall (async-signal-safe) and reads errno.
    unsafe {
        cmd.pre_exec(|| {
            if libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, std::ptr::null::<libc::c_char>()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// A long-lived process of this user whose own session keyring holds the persistent keyring
/// (`keyctl session -` then `keyctl get_persistent @s`), for as long as this value lives.
pub struct PersistentKeyringHolder {
    child: Child,
}

impl PersistentKeyringHolder {
    pub fn start() -> Result<PersistentKeyringHolder> {
        let mut cmd = Command::new("sleep");
        cmd.arg("600").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: raw syscalls only, as above.
        unsafe {
            cmd.pre_exec(|| {
                if libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, std::ptr::null::<libc::c_char>()) < 0
                    || libc::syscall(
                        libc::SYS_keyctl,
                        KEYCTL_GET_PERSISTENT,
                        -1 as libc::c_long,
                        KEY_SPEC_SESSION_KEYRING,
                    ) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting a process that links the persistent keyring")?;
        Ok(PersistentKeyringHolder { child })
    }
}

impl Drop for PersistentKeyringHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child's add_key, keyctl and request_key calls fail with `errno`, as under Docker's
/// default seccomp profile (EPERM) or one that hides the calls (ENOSYS).
pub fn with_keyctl_blocked(cmd: &mut Command, errno: i32) -> &mut Command {
    // SAFETY: the hook builds a filter on its own stack and makes two prctl calls.
    unsafe {
        cmd.pre_exec(move || {
            let ret_errno = libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA);
            let mut filter = [
                // Load the syscall number (offset 0 of struct seccomp_data).
                bpf(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
                bpf(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 3, 0, libc::SYS_keyctl as u32),
                bpf(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 2, 0, libc::SYS_add_key as u32),
                bpf(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 1, 0, libc::SYS_request_key as u32),
                bpf(libc::BPF_RET | libc::BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
                bpf(libc::BPF_RET | libc::BPF_K, 0, 0, ret_errno),
            ];
            let program = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_mut_ptr() };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &program as *const libc::sock_fprog)
                    != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

fn bpf(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt, jf, k }
}
