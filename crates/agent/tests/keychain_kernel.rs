//! The kernel keyring store against the real kernel: a login is found from every thread and
//! every session keyring arrangement of the same user, entries of the previous code are
//! found and moved, a logout removes every link, and failures other than "no entry" say why.
//!
//! Required (a failure, not a skip) under `cargo xtask test` (`EDGE_TEST_KERNEL_KEYRING=1`)
//! and in CI. Each test uses its own profile names and removes only its own keys: other
//! programs of this user (other test runs) share the persistent and user keyrings.
#![cfg(target_os = "linux")]

use edge_agent::keychain::{BROWSER_KEY_SERVICE, KEYCHAIN_SERVICE};
use edge_agent::{CredentialStore, Credentials, DeviceKey, Keychain, KeychainChoice, Secret};
use linux_keyutils::{Key, KeyError, KeyPermissionsBuilder, KeyRing, KeyRingIdentifier, Permission};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A profile name no other test (or test run) uses.
fn profile(name: &str) -> String {
    format!("kt-{name}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The description the keychain gives the entry of (`service`, `profile`).
fn description(service: &str, profile: &str) -> String {
    format!("keyring-rs:{profile}@{service}")
}

/// A kernel keychain for `profile`, or `None` (a loud skip) when the kernel keyring is not
/// usable and nothing requires it. The check runs on a thread of its own, so the calling
/// thread's keyrings stay as the process started, like a tokio worker's.
fn kernel(profile: &str) -> Option<Keychain> {
    let keychain = Keychain::new(KeychainChoice::Kernel, profile);
    match on_new_thread(move || keychain.backend().map(|_| keychain)) {
        Ok(keychain) => Some(keychain),
        Err(e) => {
            let required =
                std::env::var("EDGE_TEST_KERNEL_KEYRING").as_deref() == Ok("1") || std::env::var_os("CI").is_some();
            assert!(!required, "EDGE_TEST_KERNEL_KEYRING=1 (or CI) requires the kernel keyring: {e}");
            eprintln!("SKIPPED: the kernel keyring is not usable here ({e})");
            None
        }
    }
}

fn credentials(profile: &str) -> Credentials {
    Credentials {
        hub_url: "https://hub.example".into(),
        agent_id: format!("agt_{profile}"),
        creator_id: "cr_1".into(),
        device_key: DeviceKey::generate().unwrap(),
    }
}

/// Gives the calling thread a new, empty session keyring of its own, as a process started
/// by `keyctl session -` or a fresh PAM login has.
fn join_new_session_keyring() {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: keyctl(2) with a NULL name only replaces this thread's session keyring.
    let id = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, std::ptr::null::<libc::c_char>()) };
    assert!(id > 0, "keyctl(JOIN_SESSION_KEYRING): {}", std::io::Error::last_os_error());
}

/// The persistent keyring, linked into this thread's keyring so this thread may search it.
fn persistent() -> KeyRing {
    KeyRing::get_persistent(KeyRingIdentifier::Thread).unwrap()
}

fn user_keyring() -> KeyRing {
    KeyRing::from_special_id(KeyRingIdentifier::User, false).unwrap()
}

fn session_keyring() -> KeyRing {
    KeyRing::from_special_id(KeyRingIdentifier::Session, false).unwrap()
}

fn found(ring: KeyRing, description: &str) -> Option<Key> {
    match ring.search(description) {
        Ok(key) => Some(key),
        Err(KeyError::KeyDoesNotExist) => None,
        Err(e) => panic!("searching for {description}: {e:?}"),
    }
}

/// Runs `f` on a new thread spawned from the calling one and returns its result.
fn on_new_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(f).join().expect("test thread panicked")
}

fn load_agent_id(profile: &str) -> Result<Option<String>, String> {
    Keychain::new(KeychainChoice::Kernel, profile).load().map(|c| c.map(|c| c.agent_id)).map_err(|e| e.to_string())
}

/// The bug of issue #17: a login saved on one thread was "not logged in" on a thread that
/// was not the first to use the keychain in its process (keyring 3.6's store searched the
/// user-session keyring there). Every thread, whatever its session keyring, must find it.
/// The readers are spawned from this test's thread, which never touches a keyring itself
/// (as tokio's blocking threads are spawned from workers that do not).
#[test]
fn a_login_is_found_from_every_thread_and_session_keyring() {
    let profile = profile("threads");
    let Some(keychain) = kernel(&profile) else { return };
    let creds = credentials(&profile);
    let saver = profile.clone();
    let saved = creds.clone();
    // Saved the way `edge-agent login` does: resolve the backend, then save, on one thread.
    on_new_thread(move || Keychain::new(KeychainChoice::Kernel, &saver).save(&saved)).unwrap();

    let shared = Arc::new(keychain);
    let mut readers = Vec::new();
    for round in 0..8 {
        let p = profile.clone();
        // A fresh keychain on a fresh thread: a new process's first read.
        readers.push(thread::spawn(move || load_agent_id(&p)));
        // The same keychain on another fresh thread: `run`'s second read.
        let s = Arc::clone(&shared);
        readers.push(thread::spawn(move || s.load().map(|c| c.map(|c| c.agent_id)).map_err(|e| e.to_string())));
        // A thread started from a thread: tokio's blocking pool grows from worker threads.
        let p = profile.clone();
        readers.push(thread::spawn(move || on_new_thread(move || load_agent_id(&p))));
        // A thread with a session keyring of its own (`keyctl session -`, a new PAM login).
        let p = profile.clone();
        readers.push(thread::spawn(move || {
            join_new_session_keyring();
            load_agent_id(&p)
        }));
        // A thread whose own session keyring holds the persistent keyring
        // (`keyctl get_persistent @s` in another program of this user).
        let p = profile.clone();
        readers.push(thread::spawn(move || {
            join_new_session_keyring();
            KeyRing::get_persistent(KeyRingIdentifier::Session).unwrap();
            load_agent_id(&p)
        }));
        if round % 2 == 0 {
            // Reads while the entry is being rewritten must see a login, old or new.
            let p = profile.clone();
            let again = creds.clone();
            readers.push(thread::spawn(move || {
                Keychain::new(KeychainChoice::Kernel, &p)
                    .save(&again)
                    .map(|()| Some(again.agent_id))
                    .map_err(|e| e.to_string())
            }));
        }
    }
    for reader in readers {
        let got = reader.join().expect("reader panicked");
        assert_eq!(got, Ok(Some(creds.agent_id.clone())), "a thread did not find the login");
    }
    shared.delete().unwrap();
    assert_eq!(on_new_thread(move || load_agent_id(&profile)), Ok(None));
}

/// An entry written by keyring 3.6's store (default permissions, in the session keyring,
/// linked into the persistent keyring when that worked) is still a login: it is read, then
/// moved into the persistent and user keyrings with this store's permissions.
#[test]
fn an_entry_of_the_previous_store_is_found_and_moved() {
    let profile = profile("legacy");
    let Some(keychain) = kernel(&profile) else { return };
    let desc = description(KEYCHAIN_SERVICE, &profile);
    let creds = credentials(&profile);
    // Exactly what keyring 3.6 did in a thread of a process without a session keyring when
    // its link into the persistent keyring failed: the key is in `@s` (here `@us`) only.
    let legacy = session_keyring().add_key(&desc, creds.to_keychain_json().expose().as_bytes()).unwrap();
    assert_eq!(legacy.metadata().unwrap().get_perms().bits(), 0x3f01_0000, "keyring 3.6's default permissions");

    let loaded = keychain.load().unwrap().expect("the previous store's entry is a login");
    assert_eq!(loaded.agent_id, creds.agent_id);
    assert_eq!(loaded.device_key.public_key_base64(), creds.device_key.public_key_base64());
    assert_eq!(found(persistent(), &desc), Some(legacy), "moved into the persistent keyring");
    assert_eq!(found(user_keyring(), &desc), Some(legacy), "linked into the user keyring");
    assert_eq!(legacy.metadata().unwrap().get_perms().bits(), 0x3f3f_0000, "readable by the owning user");

    // Logout removes it from the session keyring too, not only from the new homes.
    keychain.delete().unwrap();
    assert_eq!(found(session_keyring(), &desc), None);
    assert_eq!(found(persistent(), &desc), None);
    assert_eq!(found(user_keyring(), &desc), None);
    assert!(keychain.load().unwrap().is_none());
}

/// A new login where the previous store left an entry in the session keyring: an older
/// agent binary in this session (which searches there first) must not go on reading the
/// old login, so the stale copy is dropped.
#[test]
fn a_new_login_drops_a_stale_copy_in_the_session_keyring() {
    let profile = profile("stale");
    let Some(keychain) = kernel(&profile) else { return };
    let desc = description(KEYCHAIN_SERVICE, &profile);
    let old = credentials(&profile);
    let stale = session_keyring().add_key(&desc, old.to_keychain_json().expose().as_bytes()).unwrap();

    let mut new = credentials(&profile);
    new.agent_id = format!("agt_{profile}_again");
    keychain.save(&new).unwrap();
    assert!(stale.read_to_vec().is_err(), "the stale copy is still readable");
    let stored = found(persistent(), &desc).expect("the new login is in the persistent keyring");
    assert_ne!(stored, stale);
    // Whatever the session keyring still reaches is the new login.
    if let Some(key) = found(session_keyring(), &desc) {
        assert_eq!(key, stored);
    }
    assert_eq!(keychain.load().unwrap().map(|c| c.agent_id), Some(new.agent_id));
    keychain.delete().unwrap();
    assert!(keychain.load().unwrap().is_none());
}

/// Logout invalidates the key, so a link another program made (the previous store linked
/// entries into every session keyring that read them) does not keep the login alive.
#[test]
fn logout_removes_the_entry_from_every_keyring() {
    let profile = profile("logout");
    let Some(keychain) = kernel(&profile) else { return };
    keychain.save(&credentials(&profile)).unwrap();
    keychain.write_secret(BROWSER_KEY_SERVICE, &Secret::new("browser-key".to_owned())).unwrap();
    let desc = description(KEYCHAIN_SERVICE, &profile);
    let key = found(persistent(), &desc).expect("stored in the persistent keyring");
    assert_eq!(found(user_keyring(), &desc), Some(key), "and linked into the user keyring");
    // Another program's session keyring links it too.
    let elsewhere = on_new_thread(move || {
        join_new_session_keyring();
        let session = session_keyring();
        session.link_key(key).unwrap();
        session
    });

    keychain.delete().unwrap();
    assert!(keychain.load().unwrap().is_none());
    assert!(keychain.read_secret(BROWSER_KEY_SERVICE).unwrap().is_none(), "logout forgets the browser key");
    assert_eq!(found(persistent(), &desc), None);
    assert_eq!(found(user_keyring(), &desc), None);
    // Invalidated keys vanish from every keyring; the collector unlinks them soon after.
    let deadline = Instant::now() + Duration::from_secs(10);
    while elsewhere.get_links(64).unwrap().iter().any(|node| node.as_key() == Some(key)) {
        assert!(Instant::now() < deadline, "the other session keyring still links the deleted key");
        thread::sleep(Duration::from_millis(20));
    }
    assert!(key.read_to_vec().is_err(), "the deleted key is still readable");
    // Deleting what is not there is not an error.
    keychain.delete().unwrap();
}

/// A revoked entry is not "not logged in": the error says it was revoked and what to do,
/// and logging in again (or out) clears it.
#[test]
fn a_revoked_entry_is_an_error_that_says_so() {
    let profile = profile("revoked");
    let Some(keychain) = kernel(&profile) else { return };
    keychain.save(&credentials(&profile)).unwrap();
    found(persistent(), &description(KEYCHAIN_SERVICE, &profile)).unwrap().revoke().unwrap();

    let error = keychain.load().expect_err("a revoked entry must not read as logged out").to_string();
    assert!(error.contains("revoked (EKEYREVOKED)") && error.contains("edge-agent login"), "{error}");
    let status = keychain.backend_name();
    assert!(status.is_ok(), "the backend stays usable: {status:?}");

    // Logging in again replaces the revoked key.
    let fresh = credentials(&profile);
    keychain.save(&fresh).unwrap();
    assert_eq!(keychain.load().unwrap().map(|c| c.agent_id), Some(fresh.agent_id));

    // And a logout of a revoked entry leaves nothing behind that a later read trips on.
    found(persistent(), &description(KEYCHAIN_SERVICE, &profile)).unwrap().revoke().unwrap();
    keychain.delete().unwrap();
    assert!(keychain.load().unwrap().is_none());
}

/// An entry that expired (someone set a timeout on it) says so.
#[test]
fn an_expired_entry_is_an_error_that_says_so() {
    let profile = profile("expired");
    let Some(keychain) = kernel(&profile) else { return };
    keychain.save(&credentials(&profile)).unwrap();
    found(persistent(), &description(KEYCHAIN_SERVICE, &profile)).unwrap().set_timeout(1).unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let error = loop {
        match keychain.load() {
            Ok(Some(_)) if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
            Ok(other) => panic!("the entry should have expired by now; read {:?}", other.map(|c| c.agent_id)),
            Err(e) => break e.to_string(),
        }
    };
    assert!(error.contains("expired (EKEYEXPIRED)"), "{error}");
    keychain.delete().unwrap();
    assert!(keychain.load().unwrap().is_none());
}

/// A key this user may no longer search (its permissions were changed) is an access error
/// naming EACCES, not an absent login.
#[test]
fn a_forbidden_entry_is_an_error_that_says_so() {
    let profile = profile("forbidden");
    let Some(keychain) = kernel(&profile) else { return };
    keychain.save(&credentials(&profile)).unwrap();
    let desc = description(KEYCHAIN_SERVICE, &profile);
    let key = found(persistent(), &desc).unwrap();
    key.set_perms(KeyPermissionsBuilder::builder().posessor(Permission::VIEW).user(Permission::VIEW).build()).unwrap();

    let error = keychain.load().expect_err("a forbidden entry must not read as logged out").to_string();
    assert!(error.contains("access denied (EACCES)") && error.contains(&desc), "{error}");

    // Not deletable by search either; the test removes its links itself (keyrings it may write).
    let _ = persistent().unlink_key(key);
    let _ = user_keyring().unlink_key(key);
    assert!(keychain.load().unwrap().is_none());
}

/// An empty secret cannot be a kernel key; the caller hears so instead of a false success.
#[test]
fn an_empty_secret_is_refused() {
    let profile = profile("empty");
    let Some(keychain) = kernel(&profile) else { return };
    let error = keychain.write_secret(BROWSER_KEY_SERVICE, &Secret::new(String::new())).unwrap_err().to_string();
    assert!(error.contains("empty"), "{error}");
    assert!(keychain.read_secret(BROWSER_KEY_SERVICE).unwrap().is_none());
}
