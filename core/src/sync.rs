//! The one place in agentwire that names atomics and blocking locks (and `Arc`).
//!
//! Under `--cfg loom` every type here is [loom]'s instrumented twin, so the pool's atomic
//! logic can be model-checked by `core/tests/loom_pool.rs`. In every other build they are
//! `#[repr(transparent)]` wrappers around the `core`/`std` types whose methods are
//! `#[inline]` one-line forwards: the same machine code as the std types.
//!
//! Why wrappers and not plain `pub use core::sync::atomic::AtomicU64`: `clippy.toml` forbids
//! the std atomics and locks everywhere (so no code can silently escape the loom models), and
//! clippy's `disallowed-types` resolves a re-export to the original definition — a plain
//! re-export would be flagged at every use site of this module. Distinct types are what let
//! the lint tell "through the shim" from "around it".
//!
//! The wrappers offer the API that std and loom have in common. Two differences to keep in
//! mind: loom's constructors are not `const` (so nothing built from these types may live in a
//! `static` if it is to be loom-checked), and loom types only work inside `loom::model`.
//!
//! [loom]: https://docs.rs/loom

// This module is the sanctioned bypass of the `disallowed-types` list in clippy.toml.
#![allow(clippy::disallowed_types)]

#[cfg(loom)]
pub use loom::sync::atomic::{
    AtomicBool, AtomicI8, AtomicI16, AtomicI32, AtomicI64, AtomicIsize, AtomicU8, AtomicU16,
    AtomicU32, AtomicU64, AtomicUsize,
};
#[cfg(loom)]
pub use loom::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

#[cfg(not(loom))]
pub use alloc::sync::Arc;
pub use core::sync::atomic::Ordering;
#[cfg(not(loom))]
pub use std::sync::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};
#[cfg(not(loom))]
pub use wrappers::*;

#[cfg(not(loom))]
mod wrappers {
    use core::fmt;
    use core::sync::atomic as std_atomic;
    use std::sync::{LockResult, TryLockResult};

    use super::{MutexGuard, Ordering, RwLockReadGuard, RwLockWriteGuard};

    macro_rules! forward_common {
        ($name:ident, $value:ty) => {
            #[doc = concat!("See [`core::sync::atomic::", stringify!($name), "::new`].")]
            #[inline]
            #[must_use]
            pub const fn new(value: $value) -> Self {
                $name(std_atomic::$name::new(value))
            }

            #[doc = concat!("See [`core::sync::atomic::", stringify!($name), "::load`].")]
            #[inline]
            pub fn load(&self, order: Ordering) -> $value {
                self.0.load(order)
            }

            #[doc = concat!("See [`core::sync::atomic::", stringify!($name), "::store`].")]
            #[inline]
            pub fn store(&self, value: $value, order: Ordering) {
                self.0.store(value, order);
            }

            #[doc = concat!("See [`core::sync::atomic::", stringify!($name), "::swap`].")]
            #[inline]
            pub fn swap(&self, value: $value, order: Ordering) -> $value {
                self.0.swap(value, order)
            }

            #[doc = concat!(
                "See [`core::sync::atomic::", stringify!($name), "::compare_exchange`]."
            )]
            #[inline]
            pub fn compare_exchange(
                &self,
                current: $value,
                new: $value,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$value, $value> {
                self.0.compare_exchange(current, new, success, failure)
            }

            #[doc = concat!(
                "See [`core::sync::atomic::", stringify!($name), "::compare_exchange_weak`]."
            )]
            #[inline]
            pub fn compare_exchange_weak(
                &self,
                current: $value,
                new: $value,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$value, $value> {
                self.0.compare_exchange_weak(current, new, success, failure)
            }

            #[doc = concat!("See [`core::sync::atomic::", stringify!($name), "::fetch_update`].")]
            #[inline]
            pub fn fetch_update<F: FnMut($value) -> Option<$value>>(
                &self,
                set_order: Ordering,
                fetch_order: Ordering,
                f: F,
            ) -> Result<$value, $value> {
                self.0.fetch_update(set_order, fetch_order, f)
            }

            #[doc = concat!("See [`core::sync::atomic::", stringify!($name), "::fetch_and`].")]
            #[inline]
            pub fn fetch_and(&self, value: $value, order: Ordering) -> $value {
                self.0.fetch_and(value, order)
            }

            #[doc = concat!("See [`core::sync::atomic::", stringify!($name), "::fetch_or`].")]
            #[inline]
            pub fn fetch_or(&self, value: $value, order: Ordering) -> $value {
                self.0.fetch_or(value, order)
            }

            #[doc = concat!("See [`core::sync::atomic::", stringify!($name), "::fetch_xor`].")]
            #[inline]
            pub fn fetch_xor(&self, value: $value, order: Ordering) -> $value {
                self.0.fetch_xor(value, order)
            }

            #[doc = concat!("See [`core::sync::atomic::", stringify!($name), "::into_inner`].")]
            #[inline]
            #[must_use]
            pub fn into_inner(self) -> $value {
                self.0.into_inner()
            }
        };
    }

    macro_rules! atomic_int {
        ($($name:ident($int:ty)),* $(,)?) => {$(
            #[doc = concat!(
                "[`core::sync::atomic::", stringify!($name), "`] (loom's under `cfg(loom)`)."
            )]
            #[repr(transparent)]
            #[derive(Default)]
            pub struct $name(std_atomic::$name);

            impl $name {
                forward_common!($name, $int);

                #[doc = concat!("See [`core::sync::atomic::", stringify!($name), "::fetch_add`].")]
                #[inline]
                pub fn fetch_add(&self, value: $int, order: Ordering) -> $int {
                    self.0.fetch_add(value, order)
                }

                #[doc = concat!("See [`core::sync::atomic::", stringify!($name), "::fetch_sub`].")]
                #[inline]
                pub fn fetch_sub(&self, value: $int, order: Ordering) -> $int {
                    self.0.fetch_sub(value, order)
                }

                #[doc = concat!("See [`core::sync::atomic::", stringify!($name), "::fetch_max`].")]
                #[inline]
                pub fn fetch_max(&self, value: $int, order: Ordering) -> $int {
                    self.0.fetch_max(value, order)
                }

                #[doc = concat!("See [`core::sync::atomic::", stringify!($name), "::fetch_min`].")]
                #[inline]
                pub fn fetch_min(&self, value: $int, order: Ordering) -> $int {
                    self.0.fetch_min(value, order)
                }
            }

            impl fmt::Debug for $name {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    fmt::Debug::fmt(&self.0, f)
                }
            }
        )*};
    }

    atomic_int!(
        AtomicU8(u8),
        AtomicU16(u16),
        AtomicU32(u32),
        AtomicU64(u64),
        AtomicUsize(usize),
        AtomicI8(i8),
        AtomicI16(i16),
        AtomicI32(i32),
        AtomicI64(i64),
        AtomicIsize(isize),
    );

    /// [`core::sync::atomic::AtomicBool`] (loom's under `cfg(loom)`).
    #[repr(transparent)]
    #[derive(Default)]
    pub struct AtomicBool(std_atomic::AtomicBool);

    impl AtomicBool {
        forward_common!(AtomicBool, bool);
    }

    impl fmt::Debug for AtomicBool {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            fmt::Debug::fmt(&self.0, f)
        }
    }

    /// [`std::sync::Mutex`] (loom's under `cfg(loom)`).
    #[derive(Default)]
    pub struct Mutex<T: ?Sized>(std::sync::Mutex<T>);

    impl<T> Mutex<T> {
        /// See [`std::sync::Mutex::new`].
        #[inline]
        #[must_use]
        pub const fn new(value: T) -> Self {
            Mutex(std::sync::Mutex::new(value))
        }

        /// See [`std::sync::Mutex::into_inner`].
        ///
        /// # Errors
        /// When a holder panicked (the value is inside the error).
        #[inline]
        pub fn into_inner(self) -> LockResult<T> {
            self.0.into_inner()
        }
    }

    impl<T: ?Sized> Mutex<T> {
        /// See [`std::sync::Mutex::lock`].
        ///
        /// # Errors
        /// When a holder panicked (the guard is inside the error).
        #[inline]
        pub fn lock(&self) -> LockResult<MutexGuard<'_, T>> {
            self.0.lock()
        }

        /// See [`std::sync::Mutex::try_lock`].
        ///
        /// # Errors
        /// When locked elsewhere, or when a holder panicked.
        #[inline]
        pub fn try_lock(&self) -> TryLockResult<MutexGuard<'_, T>> {
            self.0.try_lock()
        }

        /// See [`std::sync::Mutex::get_mut`].
        ///
        /// # Errors
        /// When a holder panicked (the reference is inside the error).
        #[inline]
        pub fn get_mut(&mut self) -> LockResult<&mut T> {
            self.0.get_mut()
        }
    }

    impl<T: ?Sized + fmt::Debug> fmt::Debug for Mutex<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            fmt::Debug::fmt(&self.0, f)
        }
    }

    /// [`std::sync::RwLock`] (loom's under `cfg(loom)`).
    #[derive(Default)]
    pub struct RwLock<T: ?Sized>(std::sync::RwLock<T>);

    impl<T> RwLock<T> {
        /// See [`std::sync::RwLock::new`].
        #[inline]
        #[must_use]
        pub const fn new(value: T) -> Self {
            RwLock(std::sync::RwLock::new(value))
        }

        /// See [`std::sync::RwLock::into_inner`].
        ///
        /// # Errors
        /// When a writer panicked (the value is inside the error).
        #[inline]
        pub fn into_inner(self) -> LockResult<T> {
            self.0.into_inner()
        }
    }

    impl<T: ?Sized> RwLock<T> {
        /// See [`std::sync::RwLock::read`].
        ///
        /// # Errors
        /// When a writer panicked (the guard is inside the error).
        #[inline]
        pub fn read(&self) -> LockResult<RwLockReadGuard<'_, T>> {
            self.0.read()
        }

        /// See [`std::sync::RwLock::try_read`].
        ///
        /// # Errors
        /// When write-locked elsewhere, or when a writer panicked.
        #[inline]
        pub fn try_read(&self) -> TryLockResult<RwLockReadGuard<'_, T>> {
            self.0.try_read()
        }

        /// See [`std::sync::RwLock::write`].
        ///
        /// # Errors
        /// When a writer panicked (the guard is inside the error).
        #[inline]
        pub fn write(&self) -> LockResult<RwLockWriteGuard<'_, T>> {
            self.0.write()
        }

        /// See [`std::sync::RwLock::try_write`].
        ///
        /// # Errors
        /// When locked elsewhere, or when a writer panicked.
        #[inline]
        pub fn try_write(&self) -> TryLockResult<RwLockWriteGuard<'_, T>> {
            self.0.try_write()
        }

        /// See [`std::sync::RwLock::get_mut`].
        ///
        /// # Errors
        /// When a writer panicked (the reference is inside the error).
        #[inline]
        pub fn get_mut(&mut self) -> LockResult<&mut T> {
            self.0.get_mut()
        }
    }

    impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLock<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            fmt::Debug::fmt(&self.0, f)
        }
    }
}

/// Locks `lock` for reading, ignoring poisoning.
///
/// Every critical section in this crate leaves the protected data consistent at each step
/// (a panic can only come from the allocator), so a poisoned lock still guards valid data and
/// refusing it would turn one panic into a cascade.
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Locks `lock` for writing, ignoring poisoning (see [`read`]).
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn wrappers_behave_like_the_std_types() {
        let n = AtomicU64::new(5);
        assert_eq!(n.fetch_add(2, Ordering::Relaxed), 5);
        assert_eq!(n.fetch_sub(1, Ordering::Relaxed), 7);
        assert_eq!(n.fetch_max(10, Ordering::Relaxed), 6);
        assert_eq!(
            n.compare_exchange(10, 1, Ordering::AcqRel, Ordering::Acquire),
            Ok(10)
        );
        assert_eq!(
            n.compare_exchange(10, 2, Ordering::AcqRel, Ordering::Acquire),
            Err(1)
        );
        assert_eq!(
            n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v * 3)),
            Ok(1)
        );
        assert_eq!(n.into_inner(), 3);
        let b = AtomicBool::new(false);
        assert!(!b.fetch_or(true, Ordering::AcqRel));
        assert!(b.load(Ordering::Acquire));
        assert_eq!(alloc::format!("{:?}", AtomicI64::new(-4)), "-4");
        let m = Mutex::new(1);
        *m.lock().unwrap() += 1;
        assert_eq!(m.into_inner().unwrap(), 2);
        // Same layout as the std type, so the wrapper costs nothing.
        assert_eq!(
            core::mem::size_of::<AtomicU64>(),
            core::mem::size_of::<core::sync::atomic::AtomicU64>()
        );
    }

    #[test]
    fn poisoned_lock_is_still_usable() {
        let lock = Arc::new(RwLock::new(1_u32));
        let clone = Arc::clone(&lock);
        let result = std::thread::spawn(move || {
            let _guard = write(&clone);
            panic!("poison the lock on purpose");
        })
        .join();
        assert!(result.is_err());
        assert!(lock.read().is_err(), "the lock is poisoned");
        *write(&lock) += 1;
        assert_eq!(*read(&lock), 2);
    }
}
