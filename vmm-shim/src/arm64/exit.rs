//! How a vCPU's stop is read: KVM_EXIT_SYSTEM_EVENT (what KVM's in-kernel
//! PSCI turns SYSTEM_OFF / SYSTEM_RESET / a crash into) and the arm64 register
//! IDs the shim sets with KVM_SET_ONE_REG. Pure functions, so they are tested
//! on any host.

/// `KVM_SYSTEM_EVENT_SHUTDOWN` (PSCI SYSTEM_OFF).
pub const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
/// `KVM_SYSTEM_EVENT_RESET` (PSCI SYSTEM_RESET / SYSTEM_RESET2).
pub const SYSTEM_EVENT_RESET: u32 = 2;
/// `KVM_SYSTEM_EVENT_CRASH`.
pub const SYSTEM_EVENT_CRASH: u32 = 3;

/// How the guest ended its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestStop {
    /// PSCI SYSTEM_OFF: a clean poweroff.
    Poweroff,
    /// PSCI SYSTEM_RESET: the guest asked for a reboot (the shim stops; Linux
    /// does this after a panic with `panic=N`).
    Reset,
    /// The guest reported a crash.
    Crash,
}

impl GuestStop {
    /// The stop a KVM_EXIT_SYSTEM_EVENT of `type_` means (None: an event that
    /// does not end the run, e.g. a wakeup).
    pub fn from_system_event(type_: u32) -> Option<Self> {
        match type_ {
            SYSTEM_EVENT_SHUTDOWN => Some(GuestStop::Poweroff),
            SYSTEM_EVENT_RESET => Some(GuestStop::Reset),
            SYSTEM_EVENT_CRASH => Some(GuestStop::Crash),
            _ => None,
        }
    }

    /// Whether this is the clean end of a run (exit status 0).
    pub fn is_clean(self) -> bool {
        self == GuestStop::Poweroff
    }

    /// A word for the summary.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestStop::Poweroff => "poweroff",
            GuestStop::Reset => "reset",
            GuestStop::Crash => "crash",
        }
    }
}

const KVM_REG_ARM64: u64 = 0x6000_0000_0000_0000;
const KVM_REG_SIZE_U64: u64 = 0x0030_0000_0000_0000;
const KVM_REG_ARM_CORE: u64 = 0x0010 << 16;
const KVM_REG_ARM64_SYSREG: u64 = 0x0013 << 16;
/// Byte offset of `pc` in `struct kvm_regs` (after x0..x30 and sp).
const PC_OFFSET: u64 = 32 * 8;
/// Byte offset of `pstate`.
const PSTATE_OFFSET: u64 = 33 * 8;

/// The ONE_REG id of a 64-bit core register at `byte_offset` in `kvm_regs`.
const fn core_reg(byte_offset: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (byte_offset / 4)
}

/// ONE_REG id of general register `x{n}` (n < 31).
pub const fn xreg(n: u64) -> u64 {
    core_reg(n * 8)
}

/// ONE_REG id of the PC.
pub const PC: u64 = core_reg(PC_OFFSET);
/// ONE_REG id of PSTATE.
pub const PSTATE: u64 = core_reg(PSTATE_OFFSET);
/// ONE_REG id of MPIDR_EL1 (op0 3, op1 0, CRn 0, CRm 0, op2 5).
pub const MPIDR_EL1: u64 = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM64_SYSREG | (3 << 14) | 5;
/// PSTATE at entry (boot protocol): EL1h, D/A/I/F masked.
pub const PSTATE_EL1H_DAIF: u64 = 0x3c5;

/// The DT `reg` of a CPU node: MPIDR's affinity fields (Aff3 in 39:32,
/// Aff2..Aff0 in 23:0).
pub fn mpidr_affinity(mpidr: u64) -> u64 {
    mpidr & 0xff_00ff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_events_map_to_stops() {
        assert_eq!(GuestStop::from_system_event(1), Some(GuestStop::Poweroff));
        assert_eq!(GuestStop::from_system_event(2), Some(GuestStop::Reset));
        assert_eq!(GuestStop::from_system_event(3), Some(GuestStop::Crash));
        assert_eq!(GuestStop::from_system_event(4), None, "wakeup");
        assert!(GuestStop::Poweroff.is_clean());
        assert!(!GuestStop::Reset.is_clean() && !GuestStop::Crash.is_clean());
    }

    #[test]
    fn register_ids_are_the_kernel_abi() {
        // values as in Linux's arch/arm64/include/uapi/asm/kvm.h users
        // (e.g. crosvm, Firecracker: PC = 0x6030_0000_0010_0040)
        assert_eq!(xreg(0), 0x6030_0000_0010_0000);
        assert_eq!(xreg(1), 0x6030_0000_0010_0002);
        assert_eq!(PC, 0x6030_0000_0010_0040);
        assert_eq!(PSTATE, 0x6030_0000_0010_0042);
        assert_eq!(MPIDR_EL1, 0x6030_0000_0013_c005);
        assert_eq!(mpidr_affinity(0x8000_0000 | 0x0102_0304), 0x0002_0304);
    }
}
