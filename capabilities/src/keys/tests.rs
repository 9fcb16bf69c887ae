use super::*;

#[test]
fn save_then_load_round_trips_and_file_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.key");
    let key = KeyPair::generate();
    key.save(&path).unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let loaded = KeyPair::load(&path).unwrap();
    assert_eq!(loaded.public(), key.public());
}

#[test]
fn save_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    KeyPair::generate().save(&path).unwrap();
    let err = KeyPair::generate().save(&path).unwrap_err();
    assert!(matches!(err, KeyError::AlreadyExists(_)), "{err}");
}

#[test]
fn load_refuses_a_key_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    KeyPair::generate().save(&path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let err = KeyPair::load(&path).unwrap_err();
    assert!(
        matches!(err, KeyError::InsecurePermissions { mode: 0o644, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn load_rejects_garbage_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in [
        ("empty", ""),
        ("nohdr", "00112233"),
        ("short", "bulwark-ed25519-secret:abcd"),
        ("nothex", "bulwark-ed25519-secret:zz"),
    ] {
        let path = dir.path().join(name);
        fs::write(&path, body).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = KeyPair::load(&path).unwrap_err();
        assert!(matches!(err, KeyError::Malformed { .. }), "{name}: {err}");
    }
}

#[test]
fn public_key_hex_round_trips_and_rejects_bad_input() {
    let key = KeyPair::generate().public();
    assert_eq!(PublicKey::from_hex(&key.to_hex()).unwrap(), key);
    for bad in ["", "00", &"g".repeat(64), &"0".repeat(66)] {
        assert!(PublicKey::from_hex(bad).is_err(), "{bad}");
    }
}

#[test]
fn signatures_verify_only_with_the_signing_key() {
    let a = KeyPair::generate();
    let b = KeyPair::generate();
    let sig = a.sign(b"message");
    assert!(a.public().verify(b"message", &sig));
    assert!(!a.public().verify(b"messagf", &sig));
    assert!(!b.public().verify(b"message", &sig));
}
