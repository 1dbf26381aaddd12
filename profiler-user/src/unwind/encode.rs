//! The kernel's encoding of an [`UnwindTable`]: 8-byte
//! [`profiler_common::UnwindRow`]s (u32 pc, i16 CFA offset, rule kinds,
//! rbp slot). Rules that do not fit become "no rule", where the kernel
//! falls back to frame pointers.

use profiler_common::UnwindRow as KernelRow;

use super::table::{CfaRule, RbpRule, UnwindTable};

/// Why a table cannot be encoded at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The file is linked above 4 GiB, beyond the rows' 32-bit pcs.
    #[error("code linked at {pc:#x}, above the 4 GiB the kernel's table rows address")]
    PcTooLarge {
        /// The first pc that does not fit.
        pc: u64,
    },
}

/// The rows of `table` in the kernel's encoding.
pub fn encode(table: &UnwindTable) -> Result<Vec<KernelRow>, EncodeError> {
    let rows = table.rows();
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            let pc = u32::try_from(row.pc).map_err(|_| EncodeError::PcTooLarge { pc: row.pc })?;
            let (cfa_kind, cfa_offset) = match row.cfa {
                CfaRule::Rsp(off) => (KernelRow::CFA_RSP, register_offset(off)),
                CfaRule::Rbp(off) => (KernelRow::CFA_RBP, register_offset(off)),
                CfaRule::Plt { threshold } => (
                    KernelRow::CFA_PLT,
                    Some(Offset::Bytes(i16::from(threshold))),
                ),
                CfaRule::Signal => (KernelRow::CFA_SIGNAL, Some(Offset::Bytes(0))),
                CfaRule::End => (KernelRow::CFA_END, Some(Offset::Bytes(0))),
                // A gap's length, up to the function after it.
                CfaRule::Missing => {
                    let len = rows
                        .get(i + 1)
                        .filter(|next| next.cfa != CfaRule::Missing)
                        .and_then(|next| u16::try_from(next.pc - row.pc).ok())
                        .unwrap_or(0);
                    // Read back as u16.
                    (KernelRow::CFA_GAP, Some(Offset::Bytes(len as i16)))
                }
                CfaRule::Unsupported => (KernelRow::CFA_NONE, Some(Offset::Bytes(0))),
            };
            let (cfa_kind, cfa_offset) = match cfa_offset {
                Some(off) => (cfa_kind, off),
                None => (KernelRow::CFA_NONE, Offset::Bytes(0)),
            };
            // A saved rbp the encoding cannot place is as good as lost;
            // only frames that use rbp as CFA notice.
            let rbp_slot = match row.rbp {
                RbpRule::CfaOffset(off) if off % 8 == 0 => i8::try_from(off / 8).ok(),
                _ => None,
            };
            let (cfa_kind, cfa_offset) = match cfa_offset {
                Offset::Bytes(off) => (cfa_kind, off),
                Offset::Scaled(units) => (
                    cfa_kind
                        | KernelRow::CFA_SCALED
                        | ((units >> 16) as u8) << KernelRow::CFA_SCALED_HIGH_SHIFT,
                    units as u16 as i16,
                ),
            };
            let kind = match rbp_slot {
                Some(_) => cfa_kind | KernelRow::RBP_SAVED,
                None => cfa_kind,
            };
            Ok(KernelRow {
                pc,
                cfa_offset,
                kind,
                rbp_slot: rbp_slot.unwrap_or(0),
            })
        })
        .collect()
}

/// A CFA offset as the kernel row holds it.
enum Offset {
    /// In bytes.
    Bytes(i16),
    /// In 8-byte units, below 2^18 ([`KernelRow::CFA_SCALED`]).
    Scaled(u32),
}

/// `offset` in bytes when it fits, else in 8-byte units when it is a
/// positive multiple of 8 below 2 MiB; `None` otherwise.
fn register_offset(offset: i32) -> Option<Offset> {
    if let Ok(bytes) = i16::try_from(offset) {
        return Some(Offset::Bytes(bytes));
    }
    let units = u32::try_from(offset).ok().filter(|_| offset % 8 == 0)? / 8;
    (units < 1 << 18).then_some(Offset::Scaled(units))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unwind::UnwindRow;

    fn row(pc: u64, cfa: CfaRule, rbp: RbpRule) -> UnwindRow {
        UnwindRow { pc, cfa, rbp }
    }

    #[test]
    fn encodes_rules_and_refuses_what_does_not_fit() {
        let table = UnwindTable::new(vec![
            row(0x10, CfaRule::Rsp(8), RbpRule::Unchanged),
            row(0x11, CfaRule::Rbp(16), RbpRule::CfaOffset(-16)),
            row(0x20, CfaRule::Rsp(4 << 20), RbpRule::Unchanged),
            row(0x30, CfaRule::Plt { threshold: 11 }, RbpRule::Unchanged),
            row(0x40, CfaRule::Signal, RbpRule::Unsupported),
            row(0x50, CfaRule::End, RbpRule::Unchanged),
            row(0x60, CfaRule::Rsp(64), RbpRule::CfaOffset(-4096)),
            row(0x70, CfaRule::Rsp(37424), RbpRule::CfaOffset(-16)),
            row(0x80, CfaRule::Rbp(40001), RbpRule::Unchanged),
            row(0x90, CfaRule::Missing, RbpRule::Unchanged),
            row(0xa0, CfaRule::Rsp(8), RbpRule::Unchanged),
            row(0xb0, CfaRule::Missing, RbpRule::Unchanged),
            row(0xc0, CfaRule::Rsp(540_080), RbpRule::CfaOffset(-16)),
            row(0xd0, CfaRule::Rsp((2 << 20) - 8), RbpRule::Unchanged),
            row(0xe0, CfaRule::Missing, RbpRule::Unchanged),
        ]);
        let rows = encode(&table).unwrap();
        assert_eq!(
            (rows[0].cfa_kind(), rows[0].cfa_offset, rows[0].kind),
            (KernelRow::CFA_RSP, 8, KernelRow::CFA_RSP)
        );
        assert_eq!(
            (
                rows[1].cfa_kind(),
                rows[1].kind & KernelRow::RBP_SAVED,
                rows[1].rbp_slot
            ),
            (KernelRow::CFA_RBP, KernelRow::RBP_SAVED, -2)
        );
        assert_eq!(rows[2].cfa_kind(), KernelRow::CFA_NONE, "beyond 2 MiB");
        assert_eq!(
            (rows[3].cfa_kind(), rows[3].cfa_offset),
            (KernelRow::CFA_PLT, 11)
        );
        assert_eq!(rows[4].cfa_kind(), KernelRow::CFA_SIGNAL);
        assert_eq!(rows[5].cfa_kind(), KernelRow::CFA_END);
        assert_eq!(
            rows[6].kind,
            KernelRow::CFA_RSP,
            "rbp slot beyond i8: not saved"
        );
        assert_eq!(rows[6].pc, 0x60);
        // A 37 KiB frame (LLVM has them) in 8-byte units.
        assert_eq!(
            (rows[7].cfa_kind(), rows[7].cfa_bytes(), rows[7].rbp_slot),
            (KernelRow::CFA_RSP, 37424, -2)
        );
        assert_ne!(rows[7].kind & KernelRow::CFA_SCALED, 0);
        assert_eq!(rows[0].cfa_bytes(), 8);
        assert_eq!(
            rows[8].cfa_kind(),
            KernelRow::CFA_NONE,
            "not in 8-byte units"
        );
        // A gap knows where the next function starts; the last one has
        // no next.
        assert_eq!(
            (rows[9].cfa_kind(), rows[9].cfa_offset),
            (KernelRow::CFA_GAP, 16)
        );
        assert_eq!(
            (rows[14].cfa_kind(), rows[14].cfa_offset),
            (KernelRow::CFA_GAP, 0)
        );
        // librustc_driver's 527 KiB frame, and the largest.
        for (i, bytes) in [(12, 540_080), (13, (2 << 20) - 8)] {
            assert_eq!(
                (rows[i].cfa_kind(), rows[i].cfa_bytes()),
                (KernelRow::CFA_RSP, bytes)
            );
        }
        assert_eq!(rows[12].rbp_slot, -2);
        assert_ne!(rows[12].kind & KernelRow::RBP_SAVED, 0);
    }

    #[test]
    fn refuses_code_above_4_gib() {
        let table = UnwindTable::new(vec![row(1 << 32, CfaRule::Rsp(8), RbpRule::Unchanged)]);
        assert_eq!(encode(&table), Err(EncodeError::PcTooLarge { pc: 1 << 32 }));
    }
}
