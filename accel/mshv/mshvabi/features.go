package mshvabi

// The partition's processor and XSAVE feature banks (union
// hv_partition_processor_features, two 64-bit banks, and union
// hv_partition_processor_xsave_features, in include/hyperv/hvhdk.h of the
// kernels that carry mshv_create_partition_v2). MSHV_CREATE_PARTITION's v2
// payload passes them inverted (bit set = feature disabled), and the
// hypervisor then refuses the feature to the partition's processors
// whatever CPUID the VMM presents. Bit numbers are the declaration order of
// the header's bitfields; features_test.go checks the table against that
// order.

// Bank numbers of BankFeature.Bank.
const (
	Bank0     = 0 // processor features, bank 0 (pt_cpu_fbanks[0])
	Bank1     = 1 // processor features, bank 1 (pt_cpu_fbanks[1])
	BankXSave = 2 // XSAVE features (pt_disabled_xsave)
)

// CPUID output registers of CPUIDBit.Reg.
const (
	RegEAX = iota
	RegEBX
	RegECX
	RegEDX
)

// CPUIDBit is one CPUID feature bit: leaf, subleaf, output register
// (RegEAX..RegEDX) and bit.
type CPUIDBit struct {
	Leaf, Subleaf uint32
	Reg, Bit      uint8
}

// BankFeature is one bit of a feature bank and the CPUID bit that
// announces the same feature to a guest (Intel SDM vol. 2A "CPUID", AMD
// APM vol. 3 appendix E).
type BankFeature struct {
	Name string // the header's field name without "_support"
	Bank int    // Bank0, Bank1 or BankXSave
	Bit  uint8
	// CPUID is the feature's CPUID bit; NoCPUID says it has none: the bit
	// describes hypervisor or VMX behaviour, an IA32_ARCH_CAPABILITIES or
	// mitigation property, or a feature with different bits on Intel and
	// AMD. A VMM cannot derive those from a guest's CPUID and keeps the
	// host's value.
	CPUID   CPUIDBit
	NoCPUID bool
}

func f(name string, bank int, bit uint8, leaf, sub uint32, reg, rbit uint8) BankFeature {
	return BankFeature{Name: name, Bank: bank, Bit: bit, CPUID: CPUIDBit{leaf, sub, reg, rbit}}
}

func none(name string, bank int, bit uint8) BankFeature {
	return BankFeature{Name: name, Bank: bank, Bit: bit, NoCPUID: true}
}

// BankFeatures lists every named bit of the three banks, in bank and bit
// order. Bits missing from it are reserved.
var BankFeatures = [...]BankFeature{
	f("sse3", Bank0, 0, 1, 0, RegECX, 0),
	f("lahf_sahf", Bank0, 1, 0x80000001, 0, RegECX, 0),
	f("ssse3", Bank0, 2, 1, 0, RegECX, 9),
	f("sse4_1", Bank0, 3, 1, 0, RegECX, 19),
	f("sse4_2", Bank0, 4, 1, 0, RegECX, 20),
	f("sse4a", Bank0, 5, 0x80000001, 0, RegECX, 6),
	f("xop", Bank0, 6, 0x80000001, 0, RegECX, 11),
	f("pop_cnt", Bank0, 7, 1, 0, RegECX, 23),
	f("cmpxchg16b", Bank0, 8, 1, 0, RegECX, 13),
	f("altmovcr8", Bank0, 9, 0x80000001, 0, RegECX, 4),
	f("lzcnt", Bank0, 10, 0x80000001, 0, RegECX, 5),
	f("mis_align_sse", Bank0, 11, 0x80000001, 0, RegECX, 7),
	f("mmx_ext", Bank0, 12, 0x80000001, 0, RegEDX, 22),
	f("amd3dnow", Bank0, 13, 0x80000001, 0, RegEDX, 31),
	f("extended_amd3dnow", Bank0, 14, 0x80000001, 0, RegEDX, 30),
	f("page_1gb", Bank0, 15, 0x80000001, 0, RegEDX, 26),
	f("aes", Bank0, 16, 1, 0, RegECX, 25),
	f("pclmulqdq", Bank0, 17, 1, 0, RegECX, 1),
	f("pcid", Bank0, 18, 1, 0, RegECX, 17),
	f("fma4", Bank0, 19, 0x80000001, 0, RegECX, 16),
	f("f16c", Bank0, 20, 1, 0, RegECX, 29),
	f("rd_rand", Bank0, 21, 1, 0, RegECX, 30),
	f("rd_wr_fs_gs", Bank0, 22, 7, 0, RegEBX, 0),
	f("smep", Bank0, 23, 7, 0, RegEBX, 7),
	f("enhanced_fast_string", Bank0, 24, 7, 0, RegEBX, 9),
	f("bmi1", Bank0, 25, 7, 0, RegEBX, 3),
	f("bmi2", Bank0, 26, 7, 0, RegEBX, 8),
	none("hle_deprecated", Bank0, 27),
	none("rtm_deprecated", Bank0, 28),
	f("movbe", Bank0, 29, 1, 0, RegECX, 22),
	none("npiep1", Bank0, 30),
	none("dep_x87_fpu_save", Bank0, 31),
	f("rd_seed", Bank0, 32, 7, 0, RegEBX, 18),
	f("adx", Bank0, 33, 7, 0, RegEBX, 19),
	f("intel_prefetch", Bank0, 34, 0x80000001, 0, RegECX, 8),
	f("smap", Bank0, 35, 7, 0, RegEBX, 20),
	f("hle", Bank0, 36, 7, 0, RegEBX, 4),
	f("rtm", Bank0, 37, 7, 0, RegEBX, 11),
	f("rdtscp", Bank0, 38, 0x80000001, 0, RegEDX, 27),
	f("clflushopt", Bank0, 39, 7, 0, RegEBX, 23),
	f("clwb", Bank0, 40, 7, 0, RegEBX, 24),
	f("sha", Bank0, 41, 7, 0, RegEBX, 29),
	f("x87_pointers_saved", Bank0, 42, 0x80000008, 0, RegEBX, 2),
	f("invpcid", Bank0, 43, 7, 0, RegEBX, 10),
	none("ibrs", Bank0, 44),
	none("stibp", Bank0, 45),
	none("ibpb", Bank0, 46),
	none("unrestricted_guest", Bank0, 47),
	none("mdd", Bank0, 48),
	f("fast_short_rep_mov", Bank0, 49, 7, 0, RegEDX, 4),
	none("l1dcache_flush", Bank0, 50),
	none("rdcl_no", Bank0, 51),
	none("ibrs_all", Bank0, 52),
	none("skip_l1df", Bank0, 53),
	none("ssb_no", Bank0, 54),
	none("rsb_a_no", Bank0, 55),
	none("virt_spec_ctrl", Bank0, 56),
	f("rd_pid", Bank0, 57, 7, 0, RegECX, 22),
	f("umip", Bank0, 58, 7, 0, RegECX, 2),
	none("mbs_no", Bank0, 59),
	none("mb_clear", Bank0, 60),
	none("taa_no", Bank0, 61),
	none("tsx_ctrl", Bank0, 62),
	// Bit 63 of bank 0 is reserved.

	f("acount_mcount", Bank1, 0, 6, 0, RegECX, 0),
	f("tsc_invariant", Bank1, 1, 0x80000007, 0, RegEDX, 8),
	f("cl_zero", Bank1, 2, 0x80000008, 0, RegEBX, 0),
	f("rdpru", Bank1, 3, 0x80000008, 0, RegEBX, 4),
	f("la57", Bank1, 4, 7, 0, RegECX, 16),
	none("mbec", Bank1, 5),
	none("nested_virt", Bank1, 6), // VMX (1:ECX[5]) or SVM (0x80000001:ECX[2])
	none("psfd", Bank1, 7),
	f("cet_ss", Bank1, 8, 7, 0, RegECX, 7),
	f("cet_ibt", Bank1, 9, 7, 0, RegEDX, 20),
	none("vmx_exception_inject", Bank1, 10),
	f("enqcmd", Bank1, 11, 7, 0, RegECX, 29),
	f("umwait_tpause", Bank1, 12, 7, 0, RegECX, 5),
	f("movdiri", Bank1, 13, 7, 0, RegECX, 27),
	f("movdir64b", Bank1, 14, 7, 0, RegECX, 28),
	f("cldemote", Bank1, 15, 7, 0, RegECX, 25),
	f("serialize", Bank1, 16, 7, 0, RegEDX, 14),
	f("tsc_deadline_tmr", Bank1, 17, 1, 0, RegECX, 24),
	f("tsc_adjust", Bank1, 18, 7, 0, RegEBX, 1),
	f("fzl_rep_movsb", Bank1, 19, 7, 1, RegEAX, 10),
	f("fs_rep_stosb", Bank1, 20, 7, 1, RegEAX, 11),
	f("fs_rep_cmpsb", Bank1, 21, 7, 1, RegEAX, 12),
	// Bits 22 and up: named by the kernels with the v2 payload (mainline
	// 6.15's header stops at fsrep_cmpsb, reserved_bank1:42).
	f("tsx_ld_trk", Bank1, 22, 7, 0, RegEDX, 16),
	none("vmx_ins_outs_exit_info", Bank1, 23),
	none("hlat", Bank1, 24),
	none("sbdr_ssdp_no", Bank1, 25),
	none("fbsdp_no", Bank1, 26),
	none("psdp_no", Bank1, 27),
	none("fb_clear", Bank1, 28),
	none("btc_no", Bank1, 29),
	none("ibpb_rsb_flush", Bank1, 30),
	none("stibp_always_on", Bank1, 31),
	none("perf_global_ctrl", Bank1, 32),
	none("npt_execute_only", Bank1, 33),
	none("npt_ad_flags", Bank1, 34),
	none("npt1_gb_page", Bank1, 35),
	none("amd_processor_topology_node_id", Bank1, 36),
	none("local_machine_check", Bank1, 37),
	none("extended_topology_leaf_fp256_amd", Bank1, 38),
	none("gds_no", Bank1, 39),
	f("cmpccxadd", Bank1, 40, 7, 1, RegEAX, 7),
	none("tsc_aux_virtualization", Bank1, 41),
	none("rmp_query", Bank1, 42),
	none("bhi_no", Bank1, 43),
	none("bhi_dis", Bank1, 44),
	f("prefetch_i", Bank1, 45, 7, 1, RegEDX, 14),
	f("sha512", Bank1, 46, 7, 1, RegEAX, 0),
	none("mitigation_ctrl", Bank1, 47),
	none("rfds_no", Bank1, 48),
	none("rfds_clear", Bank1, 49),
	f("sm3", Bank1, 50, 7, 1, RegEAX, 1),
	f("sm4", Bank1, 51, 7, 1, RegEAX, 2),
	none("secure_avic", Bank1, 52),
	none("guest_intercept_ctrl", Bank1, 53),
	none("sbpb", Bank1, 54),
	none("ibpb_br_type", Bank1, 55),
	none("srso_no", Bank1, 56),
	none("srso_user_kernel_no", Bank1, 57),
	none("vrew_clear", Bank1, 58),
	none("tsa_l1_no", Bank1, 59),
	none("tsa_sq_no", Bank1, 60),
	f("lass", Bank1, 61, 7, 1, RegEAX, 6),
	// Bits 62 and 63 of bank 1 are reserved.

	f("xsave", BankXSave, 0, 1, 0, RegECX, 26),
	f("xsaveopt", BankXSave, 1, 0xd, 1, RegEAX, 0),
	f("avx", BankXSave, 2, 1, 0, RegECX, 28),
	f("avx2", BankXSave, 3, 7, 0, RegEBX, 5),
	f("fma", BankXSave, 4, 1, 0, RegECX, 12),
	f("mpx", BankXSave, 5, 7, 0, RegEBX, 14),
	f("avx512", BankXSave, 6, 7, 0, RegEBX, 16),
	f("avx512_dq", BankXSave, 7, 7, 0, RegEBX, 17),
	f("avx512_cd", BankXSave, 8, 7, 0, RegEBX, 28),
	f("avx512_bw", BankXSave, 9, 7, 0, RegEBX, 30),
	f("avx512_vl", BankXSave, 10, 7, 0, RegEBX, 31),
	f("xsave_comp", BankXSave, 11, 0xd, 1, RegEAX, 1),
	f("xsave_supervisor", BankXSave, 12, 0xd, 1, RegEAX, 3),
	f("xcr1", BankXSave, 13, 0xd, 1, RegEAX, 2),
	f("avx512_bitalg", BankXSave, 14, 7, 0, RegECX, 12),
	f("avx512_i_fma", BankXSave, 15, 7, 0, RegEBX, 21),
	f("avx512_v_bmi", BankXSave, 16, 7, 0, RegECX, 1),
	f("avx512_v_bmi2", BankXSave, 17, 7, 0, RegECX, 6),
	f("avx512_vnni", BankXSave, 18, 7, 0, RegECX, 11),
	f("gfni", BankXSave, 19, 7, 0, RegECX, 8),
	f("vaes", BankXSave, 20, 7, 0, RegECX, 9),
	f("avx512_v_popcntdq", BankXSave, 21, 7, 0, RegECX, 14),
	f("vpclmulqdq", BankXSave, 22, 7, 0, RegECX, 10),
	f("avx512_bf16", BankXSave, 23, 7, 1, RegEAX, 5),
	f("avx512_vp2_intersect", BankXSave, 24, 7, 0, RegEDX, 8),
	f("avx512_fp16", BankXSave, 25, 7, 0, RegEDX, 23),
	f("xfd", BankXSave, 26, 0xd, 1, RegEAX, 4),
	f("amx_tile", BankXSave, 27, 7, 0, RegEDX, 24),
	f("amx_bf16", BankXSave, 28, 7, 0, RegEDX, 22),
	f("amx_int8", BankXSave, 29, 7, 0, RegEDX, 25),
	f("avx_vnni", BankXSave, 30, 7, 1, RegEAX, 4),
	f("avx_ifma", BankXSave, 31, 7, 1, RegEAX, 23),
	f("avx_ne_convert", BankXSave, 32, 7, 1, RegEDX, 5),
	f("avx_vnni_int8", BankXSave, 33, 7, 1, RegEDX, 4),
	f("avx_vnni_int16", BankXSave, 34, 7, 1, RegEDX, 10),
	f("avx10_1_256", BankXSave, 35, 0x24, 0, RegEBX, 17),
	f("avx10_1_512", BankXSave, 36, 0x24, 0, RegEBX, 18),
	f("amx_fp16", BankXSave, 37, 7, 1, RegEAX, 21),
	// Bits 38 and up of the XSAVE bank are reserved here (the newest
	// headers add apx, apx_nci_ndd_nf and avx10_2).
}

// XSaveComponents are the XCR0 state components each XSAVE-bank feature
// brings: with the feature disabled the hypervisor refuses those XCR0
// bits (AVX: YMM_Hi128; MPX: BNDREGS, BNDCSR; AVX-512: opmask, ZMM_Hi256,
// Hi16_ZMM; AMX: XTILECFG, XTILEDATA).
var XSaveComponents = map[string]uint64{
	"avx":      1 << 2,
	"mpx":      1<<3 | 1<<4,
	"avx512":   1<<5 | 1<<6 | 1<<7,
	"amx_tile": 1<<17 | 1<<18,
}

// V1DefaultEnabled are the features that kernels with the v2 payload
// enable when MSHV_CREATE_PARTITION comes without it (pt_flags bit 3
// clear): they start from every feature disabled and re-enable these
// (mshv_ioctl_process_pt_flags). Mainline 6.15, which has no v2 payload,
// passes zeroed creation properties instead, so the hypervisor enables
// everything it supports.
var V1DefaultEnabled = []string{
	"cet_ibt", "cet_ss", "smep", "rdtscp", "tsc_invariant", "sse3", "lahf_sahf", "ssse3",
	"sse4_1", "sse4_2", "sse4a", "xop", "pop_cnt", "cmpxchg16b", "altmovcr8", "lzcnt",
	"mis_align_sse", "mmx_ext", "amd3dnow", "extended_amd3dnow", "aes", "pclmulqdq", "pcid",
	"fma4", "f16c", "rd_rand", "rd_wr_fs_gs", "enhanced_fast_string", "bmi1", "bmi2",
	"hle_deprecated", "rtm_deprecated", "movbe", "npiep1", "dep_x87_fpu_save", "rd_seed",
	"adx", "intel_prefetch", "smap", "hle", "rtm", "invpcid", "ibrs", "stibp", "mdd", "ibpb",
	"l1dcache_flush", "virt_spec_ctrl", "mb_clear", "tsx_ctrl", "clflushopt", "rdcl_no",
	"ibrs_all", "page_1gb", "skip_l1df", "ssb_no", "mbs_no", "taa_no", "fb_clear", "gds_no",
	"bhi_no", "bhi_dis", "btc_no", "mitigation_ctrl", "rfds_no", "rfds_clear",
	"unrestricted_guest", "fast_short_rep_mov", "rsb_a_no", "rd_pid", "umip",
	"vmx_exception_inject", "rdpru", "mbec", "psfd",
	// XSAVE bank.
	"xsave", "xsaveopt", "avx", "xsave_supervisor", "xsave_comp",
}

// V1DefaultDisabled returns the disabled banks (processor banks 0 and 1,
// XSAVE bank) of a partition created without the v2 payload on a kernel
// that has it: all bits set except V1DefaultEnabled.
func V1DefaultDisabled() (banks [3]uint64) {
	banks = [3]uint64{^uint64(0), ^uint64(0), ^uint64(0)}
	for _, n := range V1DefaultEnabled {
		if bf, ok := LookupBankFeature(n); ok {
			banks[bf.Bank] &^= 1 << bf.Bit
		}
	}
	return banks
}

// LookupBankFeature finds a bank feature by name.
func LookupBankFeature(name string) (BankFeature, bool) {
	for _, bf := range BankFeatures {
		if bf.Name == name {
			return bf, true
		}
	}
	return BankFeature{}, false
}

// Has reports whether the CPUID bit is set, reading registers through get
// (which returns false for a leaf or subleaf the table lacks).
func (c CPUIDBit) Has(get func(leaf, subleaf uint32) ([4]uint32, bool)) bool {
	r, ok := get(c.Leaf, c.Subleaf)
	return ok && r[c.Reg]>>c.Bit&1 != 0
}
