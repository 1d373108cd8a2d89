package mshvabi

import (
	"strings"
	"testing"
)

// The bitfields of union hv_partition_processor_features (both banks,
// bank 1 as extended by the kernels with the v2 payload) and union
// hv_partition_processor_xsave_features, in declaration order, as
// include/hyperv/hvhdk.h declares them ("_support" dropped). "" is a
// reserved bit.
var headerBanks = [3]string{
	`sse3 lahf_sahf ssse3 sse4_1 sse4_2 sse4a xop pop_cnt cmpxchg16b altmovcr8 lzcnt
	mis_align_sse mmx_ext amd3dnow extended_amd3dnow page_1gb aes pclmulqdq pcid fma4 f16c
	rd_rand rd_wr_fs_gs smep enhanced_fast_string bmi1 bmi2 hle_deprecated rtm_deprecated
	movbe npiep1 dep_x87_fpu_save rd_seed adx intel_prefetch smap hle rtm rdtscp clflushopt
	clwb sha x87_pointers_saved invpcid ibrs stibp ibpb unrestricted_guest mdd
	fast_short_rep_mov l1dcache_flush rdcl_no ibrs_all skip_l1df ssb_no rsb_a_no
	virt_spec_ctrl rd_pid umip mbs_no mb_clear taa_no tsx_ctrl`,
	`acount_mcount tsc_invariant cl_zero rdpru la57 mbec nested_virt psfd cet_ss cet_ibt
	vmx_exception_inject enqcmd umwait_tpause movdiri movdir64b cldemote serialize
	tsc_deadline_tmr tsc_adjust fzl_rep_movsb fs_rep_stosb fs_rep_cmpsb tsx_ld_trk
	vmx_ins_outs_exit_info hlat sbdr_ssdp_no fbsdp_no psdp_no fb_clear btc_no ibpb_rsb_flush
	stibp_always_on perf_global_ctrl npt_execute_only npt_ad_flags npt1_gb_page
	amd_processor_topology_node_id local_machine_check extended_topology_leaf_fp256_amd
	gds_no cmpccxadd tsc_aux_virtualization rmp_query bhi_no bhi_dis prefetch_i sha512
	mitigation_ctrl rfds_no rfds_clear sm3 sm4 secure_avic guest_intercept_ctrl sbpb
	ibpb_br_type srso_no srso_user_kernel_no vrew_clear tsa_l1_no tsa_sq_no lass`,
	`xsave xsaveopt avx avx2 fma mpx avx512 avx512_dq avx512_cd avx512_bw avx512_vl
	xsave_comp xsave_supervisor xcr1 avx512_bitalg avx512_i_fma avx512_v_bmi avx512_v_bmi2
	avx512_vnni gfni vaes avx512_v_popcntdq vpclmulqdq avx512_bf16 avx512_vp2_intersect
	avx512_fp16 xfd amx_tile amx_bf16 amx_int8 avx_vnni avx_ifma avx_ne_convert
	avx_vnni_int8 avx_vnni_int16 avx10_1_256 avx10_1_512 amx_fp16`,
}

func TestBankFeaturesMatchHeader(t *testing.T) {
	n := 0
	for bank, decl := range headerBanks {
		for bit, name := range strings.Fields(decl) {
			bf, ok := LookupBankFeature(name)
			if !ok {
				t.Errorf("bank %d bit %d %s: not in BankFeatures", bank, bit, name)
				continue
			}
			if bf.Bank != bank || int(bf.Bit) != bit {
				t.Errorf("%s: table says bank %d bit %d, the header bank %d bit %d", name, bf.Bank, bf.Bit, bank, bit)
			}
			n++
		}
	}
	if n != len(BankFeatures) {
		t.Errorf("BankFeatures has %d entries, the header names %d", len(BankFeatures), n)
	}
}

func TestBankFeaturesWellFormed(t *testing.T) {
	names := map[string]bool{}
	bits := map[[2]int]string{}
	cpuid := map[CPUIDBit]string{}
	last := [2]int{-1, -1}
	for _, bf := range BankFeatures {
		if names[bf.Name] {
			t.Errorf("%s listed twice", bf.Name)
		}
		names[bf.Name] = true
		k := [2]int{bf.Bank, int(bf.Bit)}
		if o, ok := bits[k]; ok {
			t.Errorf("%s and %s both at bank %d bit %d", o, bf.Name, bf.Bank, bf.Bit)
		}
		bits[k] = bf.Name
		if bf.Bank < Bank0 || bf.Bank > BankXSave || bf.Bit > 63 {
			t.Errorf("%s: bank %d bit %d out of range", bf.Name, bf.Bank, bf.Bit)
		}
		if k[0] < last[0] || k[0] == last[0] && k[1] <= last[1] {
			t.Errorf("%s: not in bank and bit order", bf.Name)
		}
		last = k
		if bf.NoCPUID {
			if bf.CPUID != (CPUIDBit{}) {
				t.Errorf("%s: NoCPUID with a CPUID bit", bf.Name)
			}
			continue
		}
		c := bf.CPUID
		if c.Reg > RegEDX || c.Bit > 31 || c.Leaf == 0 || (c.Leaf >= 0x40000000 && c.Leaf < 0x80000000) {
			t.Errorf("%s: bad CPUID bit %+v", bf.Name, c)
		}
		if o, ok := cpuid[c]; ok {
			t.Errorf("%s and %s map to the same CPUID bit %+v", o, bf.Name, c)
		}
		cpuid[c] = bf.Name
	}
	// Spot checks against the Intel SDM / AMD APM.
	for name, want := range map[string]CPUIDBit{
		"rd_wr_fs_gs":      {7, 0, RegEBX, 0},
		"smep":             {7, 0, RegEBX, 7},
		"rdtscp":           {0x80000001, 0, RegEDX, 27},
		"la57":             {7, 0, RegECX, 16},
		"tsc_deadline_tmr": {1, 0, RegECX, 24},
		"avx":              {1, 0, RegECX, 28},
		"avx2":             {7, 0, RegEBX, 5},
		"xsaveopt":         {0xd, 1, RegEAX, 0},
	} {
		if bf, _ := LookupBankFeature(name); bf.CPUID != want {
			t.Errorf("%s: CPUID %+v, want %+v", name, bf.CPUID, want)
		}
	}
	for _, n := range V1DefaultEnabled {
		if !names[n] {
			t.Errorf("V1DefaultEnabled names %s, which is not a bank feature", n)
		}
	}
	for n := range XSaveComponents {
		if bf, ok := LookupBankFeature(n); !ok || bf.Bank != BankXSave {
			t.Errorf("XSaveComponents names %s, which is not an XSAVE-bank feature", n)
		}
	}
}

func TestV1DefaultDisabled(t *testing.T) {
	d := V1DefaultDisabled()
	on := func(bank int, bit uint) bool { return d[bank]>>bit&1 == 0 }
	// avx is whitelisted, avx2 and la57 are not; reserved bits stay off.
	if !on(BankXSave, 2) || on(BankXSave, 3) || on(Bank1, 4) || on(Bank0, 63) || on(BankXSave, 63) {
		t.Errorf("V1DefaultDisabled = %#x", d)
	}
	if !on(Bank0, 23) || !on(Bank1, 1) {
		t.Errorf("V1DefaultDisabled = %#x: smep and tsc_invariant must stay enabled", d)
	}
}
