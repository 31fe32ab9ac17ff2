//! Turning a passphrase into a key: Argon2id (RFC 9106), memory-hard, its parameters stored
//! with each key so they can be raised for new keys without touching old ones.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Argon2id's cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

/// Largest memory a stored key may ask for (1 GiB): a forged key file cannot make an
/// opener allocate more.
const MAX_MEMORY_KIB: u32 = 1 << 20;
const MAX_ITERATIONS: u32 = 64;
const MAX_PARALLELISM: u32 = 16;

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: about 0.15 s on one core of a current server, so guessing
    /// costs an attacker as much per try (RFC 9106's second recommended option).
    fn default() -> Self {
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

impl KdfParams {
    /// Checks the parameters are ones Argon2id accepts and within what an opener allocates.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::invalid("key derivation parameters", why));
        if self.parallelism == 0 || self.parallelism > MAX_PARALLELISM {
            return bad(format!(
                "parallelism {} is outside 1..={MAX_PARALLELISM}",
                self.parallelism
            ));
        }
        if self.iterations == 0 || self.iterations > MAX_ITERATIONS {
            return bad(format!(
                "iterations {} is outside 1..={MAX_ITERATIONS}",
                self.iterations
            ));
        }
        let least = 8 * self.parallelism;
        if self.memory_kib < least || self.memory_kib > MAX_MEMORY_KIB {
            return bad(format!(
                "memory {} KiB is outside {least}..={MAX_MEMORY_KIB} KiB",
                self.memory_kib
            ));
        }
        Ok(())
    }

    /// The 32-byte key Argon2id derives from `passphrase` and `salt`.
    pub fn derive(&self, passphrase: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
        self.validate()?;
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|e| Error::invalid("key derivation parameters", e.to_string()))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase, salt, &mut out[..])
            .map_err(|e| Error::invalid("key derivation", e.to_string()))?;
        Ok(out)
    }
}

/// Parameters cheap enough for unit tests (never for a real key).
#[cfg(test)]
pub(crate) const CHEAP: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_depends_on_passphrase_salt_and_parameters() {
        let a = CHEAP.derive(b"pass", b"saltsaltsaltsalt").unwrap();
        assert_eq!(*a, *CHEAP.derive(b"pass", b"saltsaltsaltsalt").unwrap());
        assert_ne!(*a, *CHEAP.derive(b"pasS", b"saltsaltsaltsalt").unwrap());
        assert_ne!(*a, *CHEAP.derive(b"pass", b"saltsaltsaltsalT").unwrap());
        let more = KdfParams {
            iterations: 2,
            ..CHEAP
        };
        assert_ne!(*a, *more.derive(b"pass", b"saltsaltsaltsalt").unwrap());
    }

    #[test]
    fn out_of_range_parameters_are_refused_before_allocating() {
        for p in [
            KdfParams {
                memory_kib: u32::MAX,
                ..CHEAP
            },
            KdfParams {
                iterations: 0,
                ..CHEAP
            },
            KdfParams {
                parallelism: 99,
                ..CHEAP
            },
            KdfParams {
                memory_kib: 4,
                ..CHEAP
            },
        ] {
            let err = p.derive(b"x", b"saltsaltsaltsalt").unwrap_err();
            assert!(
                err.to_string().contains("key derivation parameters"),
                "{err}"
            );
        }
        KdfParams::default().validate().unwrap();
    }
}
