//! The Linux kernel keyring (keyutils) as a `keyring` credential: where a profile's entries
//! live in the kernel, how they are found again from any process and any thread of the same
//! user, and what a failure means.
//!
//! It owns the entries' kernel homes and permissions. It must never report "no entry" for
//! anything but the kernel's "no such key" (ENOKEY), never keep an entry only where one
//! thread or one session can see it, and never put an entry's content into an error.
//!
//! # Why not `keyring`'s own keyutils store
//!
//! `edge-agent run` answered "login required: not logged in" right after a good login, a few
//! times in ten on a loaded machine. The cause, found with `strace -e keyctl` and small
//! programs (see the keychain_kernel tests):
//!
//! * Session keyrings belong to a *thread's* credentials, not to the process (keyrings(7)).
//!   A process started without one (a service manager, a container, `cargo test`, the e2e
//!   harness: anything that did not go through `pam_keyinit`) has none in any thread.
//! * `keyring` 3.6's keyutils store resolves "the session keyring" to a number once per
//!   entry (`KEYCTL_GET_KEYRING_ID`). In a thread without one, the kernel answers with the
//!   *user-session* keyring `@us`. Its next call, `KEYCTL_GET_PERSISTENT(@s)`, makes the
//!   kernel give that thread a brand-new session keyring of its own and links the
//!   persistent keyring there. The entry then searches `@us` by number: the login is not
//!   there (it was linked into the persistent keyring and another thread's session), so the
//!   search fails, and `keyring` maps that and also EACCES, EKEYREVOKED and EKEYEXPIRED to
//!   "no entry".
//! * So the first entry a thread builds never finds the login; the second one on the same
//!   thread does (by then the thread's own new session keyring holds the persistent one).
//!   `edge-agent status` probes and reads on one blocking thread and always worked. `run`
//!   reads twice: at start, and again when the connection loop starts. On a quiet machine
//!   tokio hands the second read to the same idle blocking thread; on a busy one that thread
//!   has not gone back to the pool yet, tokio starts a fresh one, and the read answers "not
//!   logged in". A shell with a session keyring (a desktop or ssh login) never sees this,
//!   which is why load alone did not reproduce it.
//!
//! # What this store does instead
//!
//! * Every operation links the user's persistent keyring (persistent-keyring(7)) into the
//!   calling *thread's* keyring (`KEYCTL_GET_PERSISTENT(-1, @t)`), which makes it possessed
//!   by that thread whatever session keyring the thread has or lacks, and resets its expiry.
//! * Entries are `user` keys in the persistent keyring, also linked into the user keyring
//!   `@u`. The persistent keyring outlives logins but expires after
//!   `/proc/sys/kernel/keys/persistent_keyring_expiry` (3 days) without a request; `@u` lives
//!   until reboot (since Linux 5.3), so an agent that runs for a week without touching the
//!   keychain still finds its login when it restarts.
//! * Keys grant the owning user (UID) every right a possessor has, so reading does not hinge
//!   on possession rules at all; the persistent keyring and `@u` belong to that user only.
//! * Reads search the persistent keyring, then `@u`, then the session keyring (where the
//!   previous code's entries may still be, alone), and move what they find into both homes.
//!   The description stays `keyring-rs:<profile>@<service>`, the previous code's, so entries
//!   it wrote are found and an older agent binary still finds ours.
//! * Only ENOKEY means "no entry". A revoked, expired or forbidden key, a blocked `keyctl`
//!   syscall or a full quota is an error that says so and what to do.
//! * Delete unlinks the key from both homes and invalidates it, which drops it from every
//!   other keyring too (other sessions the previous code linked it into), so a logout is
//!   complete.

use keyring::credential::CredentialApi;
use linux_keyutils::{Key, KeyError, KeyPermissionsBuilder, KeyRing, KeyRingIdentifier, Permission};
use std::fmt;

/// A search that keeps finding a key it then cannot read or remove gives up after this many
/// rounds: something else is changing the entry as fast as we look.
const ROUNDS: usize = 4;

/// One profile's entry (`service`, `user`) in the kernel keyring.
#[derive(Debug, Clone)]
pub(crate) struct KernelCredential {
    description: String,
}

impl KernelCredential {
    pub(crate) fn new(service: &str, user: &str) -> KernelCredential {
        // The description `keyring` 3's keyutils store used for `new_with_target(None, ..)`.
        KernelCredential { description: format!("keyring-rs:{user}@{service}") }
    }

    /// Whether the kernel keyring works for this user here at all: the syscall is allowed and
    /// the persistent and user keyrings can be reached.
    pub(crate) fn probe(&self) -> Result<(), KernelKeyringError> {
        self.open_homes().map(|_| ())
    }

    pub(crate) fn read(&self) -> Result<Option<Vec<u8>>, KernelKeyringError> {
        let homes = self.open_homes()?;
        for _ in 0..ROUNDS {
            let Some((key, found_in)) = self.locate(&homes)? else {
                return Ok(None);
            };
            match key.read_to_vec() {
                Ok(secret) => {
                    self.settle(&homes, key, found_in);
                    return Ok(Some(secret));
                }
                // A logout elsewhere removed it between the search and the read: look again,
                // and the search says whether it is gone or what else is wrong.
                Err(KeyError::KeyDoesNotExist | KeyError::KeyRevoked) => continue,
                Err(error) => return Err(self.fail(Step::Read, error)),
            }
        }
        Err(self.unsettled(Step::Read))
    }

    pub(crate) fn write(&self, secret: &[u8]) -> Result<(), KernelKeyringError> {
        let homes = self.open_homes()?;
        // Updates the key in place when the persistent keyring already holds one (other
        // threads and processes see the new value at once), else creates it; a revoked or
        // expired key of that name is displaced.
        let key = homes.persistent.add_key(&self.description, secret).map_err(|e| self.fail(Step::Write, e))?;
        key.set_perms(entry_permissions()).map_err(|e| self.fail(Step::Write, e))?;
        homes.user.link_key(key).map_err(|e| self.fail(Step::LinkUser, e))?;
        if let Err(error) = self.drop_stale_session_copy(key) {
            // The entry is stored; an older binary may read the stale copy until it is gone.
            tracing::warn!(%error, "could not remove an older copy of a kernel keyring entry");
        }
        Ok(())
    }

    /// A copy the previous code left in the session keyring would shadow the stored key for
    /// an older agent binary in this session, which searches there first.
    fn drop_stale_session_copy(&self, stored: Key) -> Result<(), KernelKeyringError> {
        let session = session_keyring().map_err(|e| self.fail(Step::OpenSession, e))?;
        for _ in 0..ROUNDS {
            match session.search(&self.description) {
                Ok(found) if found == stored => return Ok(()),
                Ok(stale) => {
                    // Invalidate before unlinking, while the key is still possessed through
                    // the session keyring (see `remove_from`).
                    stale.invalidate().map_err(|e| self.fail(Step::Delete, e))?;
                    let _ = session.unlink_key(stale);
                }
                Err(KeyError::KeyDoesNotExist | KeyError::KeyRevoked | KeyError::KeyExpired) => return Ok(()),
                Err(error) => return Err(self.fail(Step::Search(Home::Session), error)),
            }
        }
        Err(self.unsettled(Step::Delete))
    }

    /// Removes the entry from every keyring it is linked into. `Ok(false)`: there was none.
    pub(crate) fn delete(&self) -> Result<bool, KernelKeyringError> {
        let homes = self.open_homes()?;
        let session = session_keyring().map_err(|e| self.fail(Step::OpenSession, e))?;
        let mut found = false;
        for (home, ring) in [(Home::Persistent, homes.persistent), (Home::User, homes.user), (Home::Session, session)] {
            found |= self.remove_from(&homes, home, ring)?;
        }
        Ok(found)
    }

    fn remove_from(&self, homes: &Homes, home: Home, ring: KeyRing) -> Result<bool, KernelKeyringError> {
        let mut found = false;
        for _ in 0..ROUNDS {
            let key = match ring.search(&self.description) {
                Ok(key) => key,
                Err(KeyError::KeyDoesNotExist) => return Ok(found),
                // A dead key of this name still linked here (revoked keys wait for the
                // garbage collector for minutes) would make every later read fail: displace
                // it with a placeholder of the same name, which is then removed like any key.
                Err(KeyError::KeyRevoked | KeyError::KeyExpired) => {
                    ring.add_key(&self.description, b"-").map_err(|e| self.fail(Step::Delete, e))?
                }
                Err(error) => return Err(self.fail(Step::Search(home), error)),
            };
            found = true;
            // Invalidating drops the key from every keyring that links it, other programs'
            // session keyrings included, and searches skip it at once. It must come first:
            // the key may be usable only through the keyring it was found in (a key of the
            // previous store grants only its possessor anything), which the unlink removes.
            match key.invalidate() {
                Ok(()) | Err(KeyError::KeyDoesNotExist | KeyError::KeyRevoked) => {}
                Err(error) => return Err(self.fail(Step::Delete, error)),
            }
            // The garbage collector unlinks it soon; not leaving that to it keeps the homes
            // clean even if it is slow. Fails harmlessly where the key is not linked directly.
            for holder in [ring, homes.persistent, homes.user] {
                let _ = holder.unlink_key(key);
            }
        }
        Err(self.unsettled(Step::Delete))
    }

    /// The entry's key and where it was found, searching the homes before the session.
    fn locate(&self, homes: &Homes) -> Result<Option<(Key, Home)>, KernelKeyringError> {
        for home in [Home::Persistent, Home::User, Home::Session] {
            let ring = match home {
                Home::Persistent => homes.persistent,
                Home::User => homes.user,
                Home::Session => session_keyring().map_err(|e| self.fail(Step::OpenSession, e))?,
            };
            match ring.search(&self.description) {
                Ok(key) => return Ok(Some((key, home))),
                Err(KeyError::KeyDoesNotExist) => {}
                Err(error) => return Err(self.fail(Step::Search(home), error)),
            }
        }
        Ok(None)
    }

    /// Puts a key that was read into both homes with this store's permissions (an entry of
    /// the previous code, or one whose persistent keyring expired). Best effort: the read
    /// already succeeded, and the next one tries again.
    fn settle(&self, homes: &Homes, key: Key, found_in: Home) {
        let wanted = entry_permissions().bits();
        let result = (|| {
            if key.metadata()?.get_perms().bits() != wanted {
                key.set_perms(entry_permissions())?;
            }
            if found_in != Home::Persistent {
                homes.persistent.link_key(key)?;
            }
            homes.user.link_key(key)
        })();
        if let Err(error) = result {
            tracing::warn!(entry = %self.description, error = %describe(error),
                "could not move a kernel keyring entry into the persistent and user keyrings");
        }
    }

    fn open_homes(&self) -> Result<Homes, KernelKeyringError> {
        // Linked into this thread's own keyring: possessed by this thread, whichever session
        // keyring it has or lacks (see the module doc).
        let persistent =
            KeyRing::get_persistent(KeyRingIdentifier::Thread).map_err(|e| self.fail(Step::OpenPersistent, e))?;
        let user = KeyRing::from_special_id(KeyRingIdentifier::User, true).map_err(|e| self.fail(Step::OpenUser, e))?;
        Ok(Homes { persistent, user })
    }

    fn fail(&self, step: Step, error: KeyError) -> KernelKeyringError {
        KernelKeyringError { entry: self.description.clone(), step, cause: Cause::Kernel(error) }
    }

    fn unsettled(&self, step: Step) -> KernelKeyringError {
        KernelKeyringError { entry: self.description.clone(), step, cause: Cause::KeptChanging }
    }
}

impl CredentialApi for KernelCredential {
    fn set_secret(&self, secret: &[u8]) -> keyring::Result<()> {
        if secret.is_empty() {
            // A kernel `user` key cannot be empty.
            return Err(keyring::Error::Invalid("secret".into(), "cannot be empty".into()));
        }
        self.write(secret).map_err(|e| keyring::Error::PlatformFailure(Box::new(e)))
    }

    fn get_secret(&self) -> keyring::Result<Vec<u8>> {
        match self.read() {
            Ok(Some(secret)) => Ok(secret),
            Ok(None) => Err(keyring::Error::NoEntry),
            Err(e) => Err(keyring::Error::PlatformFailure(Box::new(e))),
        }
    }

    fn delete_credential(&self) -> keyring::Result<()> {
        match self.delete() {
            Ok(true) => Ok(()),
            Ok(false) => Err(keyring::Error::NoEntry),
            Err(e) => Err(keyring::Error::PlatformFailure(Box::new(e))),
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn debug_fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Possessor and owning user: everything; group and others: nothing. Any process of the
/// user can link the persistent keyring and so possess the key anyway; granting the user
/// the same rights only removes the dependence on how a process's keyrings are arranged.
fn entry_permissions() -> linux_keyutils::KeyPermissions {
    KeyPermissionsBuilder::builder().posessor(Permission::ALL).user(Permission::ALL).build()
}

/// The two keyrings an entry lives in, reached from the calling thread.
struct Homes {
    persistent: KeyRing,
    user: KeyRing,
}

/// This thread's session keyring, or the user-session keyring the kernel installs for a
/// thread that has none; only searched for entries the previous code left there.
fn session_keyring() -> Result<KeyRing, KeyError> {
    KeyRing::from_special_id(KeyRingIdentifier::Session, false)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Home {
    Persistent,
    User,
    Session,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    OpenPersistent,
    OpenUser,
    OpenSession,
    Search(Home),
    Read,
    Write,
    LinkUser,
    Delete,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::OpenPersistent => "linking this user's persistent keyring (keyctl get_persistent)",
            Step::OpenUser => "opening this user's keyring (@u)",
            Step::OpenSession => "opening the session keyring (@s)",
            Step::Search(Home::Persistent) => "searching the persistent keyring",
            Step::Search(Home::User) => "searching the user keyring (@u)",
            Step::Search(Home::Session) => "searching the session keyring (@s)",
            Step::Read => "reading",
            Step::Write => "storing",
            Step::LinkUser => "linking into the user keyring (@u)",
            Step::Delete => "removing",
        })
    }
}

/// Why a kernel keyring operation failed, and what to do about it. Carries the entry's
/// description (not secret), never its content.
#[derive(Debug)]
pub(crate) struct KernelKeyringError {
    entry: String,
    step: Step,
    cause: Cause,
}

#[derive(Debug, Clone, Copy)]
enum Cause {
    Kernel(KeyError),
    /// Found, then gone or replaced, [`ROUNDS`] times in a row.
    KeptChanging,
}

impl fmt::Display for KernelKeyringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kernel keyring, entry {:?}: {} failed: ", self.entry, self.step)?;
        match self.cause {
            Cause::Kernel(error) => write!(f, "{}; {}", describe(error), remedy(error)),
            Cause::KeptChanging => write!(
                f,
                "another program replaced or removed it {ROUNDS} times while this one looked at it; try again"
            ),
        }
    }
}

impl std::error::Error for KernelKeyringError {}

/// The kernel's answer in words, with the errno name people can search for.
fn describe(error: KeyError) -> String {
    match error {
        KeyError::KeyDoesNotExist => "no such key (ENOKEY)".into(),
        KeyError::AccessDenied => "access denied (EACCES)".into(),
        KeyError::KeyRevoked => "the key was revoked (EKEYREVOKED)".into(),
        KeyError::KeyExpired => "the key expired (EKEYEXPIRED)".into(),
        KeyError::QuotaExceeded => "this user's key quota is full (EDQUOT)".into(),
        KeyError::PermissionDenied => "operation not permitted (EPERM)".into(),
        KeyError::OperationNotSupported => "not supported by this kernel (EOPNOTSUPP)".into(),
        KeyError::OutOfMemory => "the kernel is out of memory (ENOMEM)".into(),
        KeyError::InvalidDescription => "the entry name is not valid for the kernel (a NUL byte?)".into(),
        KeyError::Unknown(libc::ENOSYS) => "the keyctl system call does not exist here (ENOSYS)".into(),
        KeyError::Unknown(errno) => format!("{} (errno {errno})", std::io::Error::from_raw_os_error(errno)),
        other => format!("{other:?}"),
    }
}

/// What a person can do about `error`.
fn remedy(error: KeyError) -> &'static str {
    match error {
        KeyError::AccessDenied => {
            "the key exists but this process may not use it (another user owns it, or its permissions were \
             changed with `keyctl setperm`): run edge-agent as the user who logged in, or remove the key \
             (`keyctl show @u` lists it) and run `edge-agent login` again"
        }
        KeyError::KeyRevoked => "someone revoked it (`keyctl revoke`): run `edge-agent login` again",
        KeyError::KeyExpired => "a timeout was set on it (`keyctl timeout`): run `edge-agent login` again",
        KeyError::QuotaExceeded => {
            "remove keys this user no longer needs (`keyctl show @u`, /proc/key-users shows the usage) or raise \
             /proc/sys/kernel/keys/maxkeys and maxbytes"
        }
        KeyError::PermissionDenied | KeyError::Unknown(libc::ENOSYS) => {
            "the keyctl system calls are blocked here (container seccomp profiles do this): allow keyctl and \
             add_key, or use --keychain secret-service inside a desktop session"
        }
        KeyError::OperationNotSupported => {
            "this kernel lacks keys or persistent keyrings (CONFIG_KEYS, CONFIG_PERSISTENT_KEYRINGS): use \
             --keychain secret-service inside a desktop session"
        }
        _ => "check that `keyctl show @u` works for this user (package keyutils), or use --keychain secret-service",
    }
}
