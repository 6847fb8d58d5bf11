"""Which tests check each row of the errno table of docs/vm-interface.md ("## Errnos").

COVERAGE maps every (call, errno) pair of the table (the call cell as the table spells
it; an errno cell of several errnos is one pair each) to its conditions, as the table's
"when" column words them, and each condition to the tests that drive it ("path::test",
or "path::test_refused[case]" for a case of tests/unit/uvm/test_errno_table.py).
test_errno_table.py parses the table and fails when a pair is added to or dropped from
the table without this mapping following, or when a test named here is gone.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

_U = "tests/unit/uvm/"
W = _U + "test_wiring.py::"
WF = _U + "test_wiring_faults.py::"
F = _U + "test_files_vm.py::"
MS = _U + "test_msync_vm.py::"
A = _U + "test_advice.py::"
MP = _U + "test_mmap_place.py::"
SL = _U + "test_sparse_and_limits.py::"
ON = _U + "test_open_names.py::"
C = _U + "test_core.py::"
V = _U + "test_vm.py::"
T = _U + "test_errno_table.py::"
R = T + "test_refused"  # + "[case id]"
_I = "tests/integration/"
IE = _I + "test_vm_errnos.py::"
IA = _I + "test_vm_advice.py::"
IF = _I + "test_vm_files.py::"
IW = _I + "test_vm_wiring.py::"
CA = _I + "test_client_api.py::"
BI = _I + "test_bad_input.py::"
UF = _I + "test_uvm_features.py::"

Refs = tuple[str, ...]

COVERAGE: dict[tuple[str, str], dict[str, Refs]] = {
    ("mmap", "EINVAL"): {
        "length 0": (
            SL + "test_mmap_length_and_address_are_capped_without_a_panic",
            CA + "test_bad_mmap_arguments_are_refused",
        ),
        # a length beyond user space: EINVAL with MAP_FIXED, or over 2^47 on the wire
        # (the schema's bound); without MAP_FIXED the core answers ENOMEM (NetBSD's uvm_map)
        "length beyond user space": (
            R + "[mmap-EINVAL-fixed-length-beyond-user-space]",
            IE + "test_mmap_errnos_over_the_wire",
        ),
        "an unaligned offset": (
            R + "[mmap-EINVAL-unaligned-offset]",
            IE + "test_mmap_errnos_over_the_wire",
        ),
        "MAP_FIXED at an unaligned address, at 0, or outside user space": (
            MP + "test_fixed_errnos_change_nothing",
            SL + "test_mmap_length_and_address_are_capped_without_a_panic",
            CA + "test_bad_mmap_arguments_are_refused",
            IA + "test_mmap_hint_and_fixed_replace",
        ),
    },
    ("mmap", "ENOMEM"): {
        "no room anywhere": (R + "[mmap-ENOMEM-no-room-anywhere]",),
        "a length beyond user space without MAP_FIXED": (
            SL + "test_mmap_length_and_address_are_capped_without_a_panic",
            IE + "test_mmap_errnos_over_the_wire",
        ),
        "beyond vsize": (
            SL + "test_vsize_limit_gives_enomem_and_a_forked_child_inherits_the_size",
        ),
        "beyond map_entries": (
            SL + "test_map_entries_limit_gives_enomem_at_mmap_and_at_every_clip",
        ),
        "beyond maxentries": (
            SL + "test_maxentries_bounds_the_machine_at_mmap_clip_and_fork",
            SL + "test_a_fork_charges_its_childs_entries_before_the_child_exists",
        ),
        "MAP_FIXED counts what it removes": (
            MP + "test_fixed_limits_count_what_the_replace_removes",
        ),
        "MCL_FUTURE beyond RLIMIT_MEMLOCK, or no frame (undone)": (
            W + "test_an_mcl_future_mapping_that_cannot_be_wired_is_not_made",
        ),
        "MCL_FUTURE beyond wiredmax": (R + "[mmap-ENOMEM-mcl-future-beyond-wiredmax]",),
        "what MAP_FIXED replaced stays removed": (
            T + "test_map_fixed_under_mcl_future_beyond_the_limit_leaves_the_range_unmapped",
        ),
    },
    ("mmap", "EBADF"): {
        "no such open file handle": (
            F + "test_maximum_protection_follows_the_open_mode",
            UF + "test_bad_file_names_and_handles_are_refused",
            IE + "test_mmap_errnos_over_the_wire",
        ),
    },
    ("mmap", "EACCES"): {
        "PROT_READ of a file not open for reading; shared PROT_WRITE not open for writing": (
            F + "test_maximum_protection_follows_the_open_mode",
            IF + "test_open_flags_and_the_maximum_protection",
        ),
    },
    ("munmap", "EINVAL"): {
        "an unaligned address": (
            R + "[munmap-EINVAL-unaligned-address]",
            IE + "test_range_errnos_over_the_wire",
        ),
        "the range leaves user space": (
            R + "[munmap-EINVAL-range-leaves-user-space]",
            R + "[munmap-EINVAL-null-page]",
            IE + "test_range_errnos_over_the_wire",
        ),
    },
    ("munmap", "ENOMEM"): {
        "a split beyond map_entries or maxentries": (
            SL + "test_map_entries_limit_gives_enomem_at_mmap_and_at_every_clip",
            SL + "test_maxentries_bounds_the_machine_at_mmap_clip_and_fork",
        ),
    },
    ("mprotect", "EINVAL"): {
        "an unaligned address": (R + "[mprotect-EINVAL-unaligned-address]",),
        "the range leaves user space": (
            R + "[mprotect-EINVAL-range-leaves-user-space]",
            IE + "test_range_errnos_over_the_wire",
        ),
    },
    ("mprotect", "EACCES"): {
        "beyond the mapping's maximum protection": (
            F + "test_maximum_protection_follows_the_open_mode",
            IF + "test_open_flags_and_the_maximum_protection",
        ),
    },
    ("mprotect", "ENOMEM"): {
        "part of the range is not mapped": (
            C + "test_mprotect_lowers_at_once_and_raises_lazily",
            IE + "test_range_errnos_over_the_wire",
        ),
        "a split beyond the limits": (
            SL + "test_map_entries_limit_gives_enomem_at_mmap_and_at_every_clip",
            SL + "test_maxentries_bounds_the_machine_at_mmap_clip_and_fork",
        ),
        "MCL_FUTURE: cannot be wired (the protection stays)": (
            WF + "test_mprotect_out_of_prot_none_beyond_the_limit_under_mcl_future",
        ),
    },
    ("fork", "EAGAIN"): {
        "beyond procs or maxproc": (
            SL + "test_procs_limit_gives_eagain_at_spawn_and_fork_and_leaks_no_asid",
            SL + "test_maxproc_bounds_the_machine_whatever_the_sessions",
        ),
    },
    ("fork", "ENOMEM"): {
        "beyond maxentries (charged first)": (
            SL + "test_maxentries_bounds_the_machine_at_mmap_clip_and_fork",
            SL + "test_an_entry_costs_uvm_what_the_default_maxentries_assumes",
        ),
        "no frame to copy locked memory into": (
            SL + "test_a_fork_that_cannot_copy_wired_memory_leaves_no_half_child",
        ),
    },
    ("minherit", "EINVAL"): {
        "another value, DONATE_COPY included": (
            A + "test_minherit_errnos_change_nothing",
            IA + "test_minherit_variants_at_fork",
        ),
        "the range leaves user space": (
            A + "test_minherit_errnos_change_nothing",
            IE + "test_range_errnos_over_the_wire",
        ),
        "the range wraps": (R + "[minherit-EINVAL-range-wraps]",),
    },
    ("minherit", "ENOMEM"): {
        "a split beyond map_entries or maxentries": (A + "test_minherit_errnos_change_nothing",),
        "unmapped parts are skipped": (A + "test_minherit_rounds_clips_and_skips_holes",),
    },
    ("madvise", "EINVAL"): {
        "an unknown value or MADV_SPACEAVAIL": (
            A + "test_madvise_errnos_change_nothing",
            IA + "test_madvise_and_mincore",
        ),
        "the range leaves user space": (
            A + "test_madvise_errnos_change_nothing",
            IE + "test_range_errnos_over_the_wire",
        ),
        "the range wraps": (R + "[madvise-EINVAL-range-wraps]",),
    },
    ("madvise", "EFAULT"): {
        "DONTNEED or FREE over a hole": (
            A + "test_madvise_errnos_change_nothing",
            IA + "test_madvise_and_mincore",
        ),
    },
    ("madvise", "EBUSY"): {
        "MADV_FREE of wired memory": (
            A + "test_madvise_errnos_change_nothing",
            IE + "test_file_and_lock_errnos_over_the_wire",
        ),
    },
    ("madvise", "ENOMEM"): {
        "a split beyond map_entries": (A + "test_madvise_errnos_change_nothing",),
        "a split beyond maxentries": (R + "[madvise-ENOMEM-split-beyond-maxentries]",),
        "WILLNEED and the others skip holes": (A + "test_madvise_errnos_change_nothing",),
    },
    ("mincore", "EINVAL"): {
        "an unaligned address": (
            A + "test_mincore_errnos",
            IA + "test_madvise_and_mincore",
            IE + "test_range_errnos_over_the_wire",
        ),
        "the range wraps": (
            R + "[mincore-EINVAL-range-wraps]",
            R + "[mincore-EINVAL-length-wraps-to-the-address]",
        ),
        "more than MINCORE_MAX_PAGES": (A + "test_mincore_errnos",),
    },
    ("mincore", "ENOMEM"): {
        "part of the range not mapped or outside user space": (
            A + "test_mincore_errnos",
            IA + "test_madvise_and_mincore",
            IE + "test_range_errnos_over_the_wire",
        ),
    },
    ("mlock", "EAGAIN"): {
        "beyond RLIMIT_MEMLOCK": (
            W + "test_mlock_beyond_rlimit_memlock_is_eagain",
            IW + "test_rlimit_memlock_get_set_eagain_and_fork",
        ),
        "beyond wiredmax": (
            W + "test_mlock_beyond_wiredmax_is_eagain_even_for_a_huge_sparse_range",
        ),
        "wiredmax checked first": (R + "[mlock-EAGAIN-wiredmax-checked-first]",),
    },
    ("mlock", "ENOMEM"): {
        "part of the range not mapped": (
            W + "test_unmapped_ranges_and_holes_are_enomem",
            IW + "test_mlock_and_munlock_errnos",
        ),
        "PROT_NONE": (
            W + "test_mlock_of_a_prot_none_mapping_fails",
            IW + "test_mlock_and_munlock_errnos",
        ),
        "the range leaves user space (NULL's page included)": (
            W + "test_null_and_ranges_outside_user_space_are_enomem",
            IW + "test_mlock_and_munlock_errnos",
            IE + "test_range_errnos_over_the_wire",
        ),
        "the range wraps": (R + "[mlock-ENOMEM-range-wraps]",),
        "a page cannot be had (nothing left wired)": (
            WF + "test_a_failed_wiring_leaves_nothing_wired",
        ),
    },
    ("munlock", "ENOMEM"): {
        "part of the range not mapped": (
            W + "test_unmapped_ranges_and_holes_are_enomem",
            W + "test_munmap_and_exit_drop_the_locks",
        ),
        "not locked": (
            W + "test_munlock_of_memory_not_locked_is_enomem",
            W + "test_locks_do_not_nest_one_munlock_unlocks",
            IW + "test_mlock_and_munlock_errnos",
        ),
        "the range leaves user space": (
            W + "test_null_and_ranges_outside_user_space_are_enomem",
            IE + "test_range_errnos_over_the_wire",
        ),
        "the range wraps": (R + "[munlock-ENOMEM-range-wraps]",),
    },
    ("mlockall", "EINVAL"): {
        "flags 0 or unknown bits": (
            W + "test_mlockall_flags_zero_or_unknown_are_einval",
            IW + "test_mlock_and_munlock_errnos",
        ),
    },
    ("mlockall", "ENOMEM"): {
        "beyond RLIMIT_MEMLOCK or wiredmax (before anything is wired)": (
            W + "test_mlockall_beyond_the_limits_is_enomem_up_front",
        ),
        "a page cannot be had (nothing left wired)": (
            WF + "test_a_failed_wiring_leaves_nothing_wired",
        ),
    },
    ("munlockall", "—"): {
        "never fails (nothing locked too)": (
            W + "test_mlockall_current_wires_every_accessible_mapping",
            W + "test_mcl_future_wires_every_later_mapping",
        ),
    },
    ("getrlimit", "EINVAL"): {
        "a resource other than RLIMIT_MEMLOCK": (
            W + "test_getrlimit_defaults_to_a_third_of_ram_and_all_of_it",
            IE + "test_file_and_lock_errnos_over_the_wire",
        ),
    },
    ("setrlimit", "EINVAL"): {
        "a resource other than RLIMIT_MEMLOCK": (
            W + "test_setrlimit_rules",
            IW + "test_rlimit_memlock_get_set_eagain_and_fork",
        ),
        "cur > max": (
            W + "test_setrlimit_rules",
            R + "[setrlimit-EINVAL-rlim-infinity-over-the-hard-limit]",
        ),
    },
    ("setrlimit", "EPERM"): {
        "raising the hard limit": (
            W + "test_setrlimit_rules",
            R + "[setrlimit-EPERM-rlim-infinity]",
            IE + "test_file_and_lock_errnos_over_the_wire",
        ),
    },
    ("open", "EINVAL"): {
        "a bad name (empty, absolute, .., NUL)": (
            ON + "test_a_bad_name_gets_its_errno_and_changes_nothing",
            UF + "test_bad_file_names_and_handles_are_refused",
            BI + "test_bad_file_names_get_errnos_and_links_are_not_followed",
        ),
        "a negative size": (ON + "test_a_size_beyond_filesize_is_efbig_and_makes_nothing",),
        "flags with other bits or O_ACCMODE; a size not open for writing": (
            F + "test_bad_open_flags_are_einval_and_make_nothing",
            IF + "test_open_flags_and_the_maximum_protection",
        ),
    },
    ("open", "EEXIST"): {
        "O_CREAT | O_EXCL and the name exists": (
            F + "test_o_creat_and_o_excl",
            IF + "test_open_flags_and_the_maximum_protection",
        ),
    },
    ("open", "ENOENT"): {
        "missing, no O_CREAT": (
            F + "test_o_creat_and_o_excl",
            ON + "test_a_bad_name_gets_its_errno_and_changes_nothing",
            UF + "test_bad_file_names_and_handles_are_refused",
        ),
    },
    ("open", "EISDIR"): {
        "a directory": (ON + "test_a_bad_name_gets_its_errno_and_changes_nothing",)
    },
    ("open", "ENOTDIR"): {
        "a file on the way": (ON + "test_a_bad_name_gets_its_errno_and_changes_nothing",)
    },
    ("open", "ENAMETOOLONG"): {
        "a long component, path or depth": (
            ON + "test_a_bad_name_gets_its_errno_and_changes_nothing",
            BI + "test_bad_file_names_get_errnos_and_links_are_not_followed",
        ),
    },
    ("open", "ELOOP"): {
        "a symbolic link": (
            ON + "test_a_bad_name_gets_its_errno_and_changes_nothing",
            BI + "test_bad_file_names_get_errnos_and_links_are_not_followed",
        ),
    },
    ("open", "EACCES"): {
        "not a regular file": (
            ON + "test_a_bad_name_gets_its_errno_and_changes_nothing",
            ON + "test_a_unix_socket_is_not_a_regular_file",
        ),
        "the host refused": (ON + "test_a_file_the_host_refuses_is_eacces",),
    },
    ("open", "EIO"): {
        "the host file system failed": (
            ON + "test_host_failures_map_to_errnos_and_close_never_raises",
            R + "[open-EIO-the-host-fails]",
        ),
    },
    ("open", "EFBIG"): {
        "a size beyond filesize": (ON + "test_a_size_beyond_filesize_is_efbig_and_makes_nothing",),
    },
    ("open", "EMFILE"): {
        "beyond the files limit": (SL + "test_files_limit_gives_emfile_and_opens_nothing",)
    },
    ("close", "EBADF"): {
        "no such handle (unknown, another session's, closed)": (
            R + "[close-EBADF-no-such-handle]",
            R + "[close-EBADF-another-sessions-handle]",
            R + "[close-EBADF-closed-already]",
            IE + "test_file_and_lock_errnos_over_the_wire",
        ),
    },
    ("ftruncate", "EBADF"): {
        "no such handle": (
            F + "test_ftruncate_errnos_change_nothing",
            IE + "test_file_and_lock_errnos_over_the_wire",
        ),
    },
    ("ftruncate", "EINVAL"): {
        "not open for writing": (
            F + "test_ftruncate_errnos_change_nothing",
            F + "test_o_trunc_truncates_even_a_read_only_open_as_netbsd_does",
            IF + "test_open_flags_and_the_maximum_protection",
        ),
    },
    ("ftruncate", "EFBIG"): {
        "beyond filesize": (
            F + "test_ftruncate_errnos_change_nothing",
            IF + "test_ftruncate_shrink_sigbus_and_grow",
        ),
    },
    ("ftruncate", "EIO"): {"the host refused": (F + "test_ftruncate_errnos_change_nothing",)},
    ("ftruncate", "ENOMEM"): {
        "a loaned last page could not be copied (the size changed)": (
            T + "test_ftruncate_enomem_when_a_loaned_last_page_cannot_be_copied",
        ),
    },
    ("msync", "EINVAL"): {
        "none of the three flags, unknown bits, MS_ASYNC and MS_SYNC": (
            MS + "test_bad_flags_are_einval",
            IF + "test_msync_flags_and_the_host_file_byte_for_byte",
        ),
        "the range leaves user space": (MS + "test_range_rounding_and_errnos",),
    },
    ("msync", "EFAULT"): {
        "part of the range is not mapped": (
            MS + "test_range_rounding_and_errnos",
            IF + "test_msync_flags_and_the_host_file_byte_for_byte",
        ),
    },
    ("msync", "EBUSY"): {
        "MS_INVALIDATE of a locked entry": (
            MS + "test_ms_invalidate_of_a_wired_range_is_ebusy",
            IE + "test_file_and_lock_errnos_over_the_wire",
        ),
    },
    ("load, store", "SIGSEGV"): {
        "no mapping, or a protection the mapping forbids": (
            CA + "test_segv_on_unmapped_address_and_machine_stays_up",
            CA + "test_segv_on_write_to_read_only_mapping",
            C + "test_mprotect_lowers_at_once_and_raises_lazily",
        ),
    },
    ("load, store", "SIGBUS"): {
        "inside a file mapping, beyond the end of the file": (
            F + "test_shrink_revokes_every_mapping_and_access_beyond_is_sigbus",
            F + "test_a_mapping_longer_than_its_file_is_sigbus_past_the_end",
            IF + "test_ftruncate_shrink_sigbus_and_grow",
        ),
    },
    ("load, store", "ENOMEM"): {
        "no frame and no swap: the process is killed": (
            V + "test_running_out_of_frames_is_enomem_and_pressure_is_reported",
            CA + "test_out_of_memory_kills_the_process_and_the_machine_carries_on",
        ),
    },
}
