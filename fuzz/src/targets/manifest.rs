//! Package headers: magic, length and manifest, random or mutated. Reading
//! never panics; an accepted manifest is consistent and round-trips.

use common::package::{MAGIC, MAX_MANIFEST_BYTES, MAX_PAYLOAD_BYTES, read_manifest};

use crate::Rng;

const VALID: &str = r#"{"format":1,"version":"2.0.0","min_compatible":"1.0.0","kind":"vm","payload_sha256":"abababababababababababababababababababababababababababababababab","payload_size":10240,"built_at":0}"#;

/// One case.
pub fn case(rng: &mut Rng) -> Result<bool, String> {
    let json: Vec<u8> = match rng.below(4) {
        0 => rng.bytes_below(200),
        1 => {
            // A valid manifest with one value replaced by something else.
            let mut v: serde_json::Value = serde_json::from_str(VALID).expect("valid");
            let keys =
                ["format", "version", "min_compatible", "kind", "payload_sha256", "payload_size", "built_at", "extra"];
            let key = rng.pick(&keys);
            let value = match rng.below(5) {
                0 => serde_json::json!(rng.text()),
                1 => serde_json::json!(rng.bits()),
                2 => serde_json::json!(-1),
                3 => serde_json::Value::Null,
                _ => serde_json::json!([rng.text()]),
            };
            v[key] = value;
            serde_json::to_vec(&v).expect("serializes")
        }
        2 => {
            let mut b = VALID.as_bytes().to_vec();
            let i = rng.below(b.len() as u64) as usize;
            b[i] = rng.bits() as u8;
            b
        }
        _ => VALID.as_bytes().to_vec(),
    };
    let mut pkg = if rng.one_in(10) { rng.bytes(8) } else { MAGIC.to_vec() };
    let len = if rng.one_in(10) { rng.bits() as u32 } else { json.len() as u32 };
    pkg.extend_from_slice(&len.to_be_bytes());
    pkg.extend_from_slice(&json);
    if rng.one_in(3) {
        pkg.truncate(rng.below(pkg.len() as u64 + 1) as usize);
    }
    let Ok(m) = read_manifest(std::io::Cursor::new(&pkg)) else { return Ok(false) };
    if len > MAX_MANIFEST_BYTES {
        return Err(format!("a {len}-byte manifest was accepted"));
    }
    if m.format != 1 || m.min_compatible > m.version || m.payload_size > MAX_PAYLOAD_BYTES {
        return Err(format!("an inconsistent manifest was accepted: {m:?}"));
    }
    let again: common::package::Manifest =
        serde_json::from_slice(&serde_json::to_vec(&m).expect("serializes")).map_err(|e| e.to_string())?;
    if again != m {
        return Err(format!("the manifest does not round-trip: {m:?} / {again:?}"));
    }
    Ok(true)
}
