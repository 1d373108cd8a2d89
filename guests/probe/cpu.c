/* cpu.c: CPUID decoding for the probe (names of feature bits, vendor,
 * brand, hypervisor leaves, TSC frequency from leaves 0x15/0x16/0x40000010). */
#include "probe.h"

#define _ 0
static const char *const l1_edx[32] = {
	"fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", _, "sep", "mtrr", "pge", "mca", "cmov",
	"pat", "pse36", "psn", "clfsh", _, "ds", "acpi", "mmx", "fxsr", "sse", "sse2", "ss", "htt", "tm", "ia64", "pbe"};
static const char *const l1_ecx[32] = {
	"sse3", "pclmulqdq", "dtes64", "monitor", "ds_cpl", "vmx", "smx", "est", "tm2", "ssse3", "cnxt_id", "sdbg",
	"fma", "cx16", "xtpr", "pdcm", _, "pcid", "dca", "sse4_1", "sse4_2", "x2apic", "movbe", "popcnt",
	"tsc_deadline", "aes", "xsave", "osxsave", "avx", "f16c", "rdrand", "hypervisor"};
static const char *const l7_ebx[32] = {
	"fsgsbase", "tsc_adjust", "sgx", "bmi1", "hle", "avx2", "fdp_excptn_only", "smep", "bmi2", "erms", "invpcid",
	"rtm", "pqm", "zero_fcs_fds", "mpx", "pqe", "avx512f", "avx512dq", "rdseed", "adx", "smap", "avx512ifma",
	"pcommit", "clflushopt", "clwb", "intel_pt", "avx512pf", "avx512er", "avx512cd", "sha_ni", "avx512bw",
	"avx512vl"};
static const char *const l7_ecx[32] = {
	"prefetchwt1", "avx512vbmi", "umip", "pku", "ospke", "waitpkg", "avx512_vbmi2", "cet_ss", "gfni", "vaes",
	"vpclmulqdq", "avx512_vnni", "avx512_bitalg", "tme", "avx512_vpopcntdq", _, "la57", _, _, _, _, _, "rdpid",
	"kl", "bus_lock_detect", "cldemote", _, "movdiri", "movdir64b", "enqcmd", "sgx_lc", "pks"};
static const char *const l7_edx[32] = {
	_, _, "avx512_4vnniw", "avx512_4fmaps", "fsrm", "uintr", _, _, "avx512_vp2intersect", _, "md_clear", _, _, _,
	"serialize", "hybrid", "tsxldtrk", _, "pconfig", "arch_lbr", "ibt", _, "amx_bf16", "avx512_fp16", "amx_tile",
	"amx_int8", "spec_ctrl", "stibp", "flush_l1d", "arch_capabilities", "core_capabilities", "ssbd"};
static const char *const ld1_eax[32] = {"xsaveopt", "xsavec", "xgetbv1", "xsaves", "xfd"};
static const char *const le1_edx[32] = {
	_, _, _, _, _, _, _, _, _, _, _, "syscall", _, _, _, _, _, _, _, _, "nx", _, "mmxext", _, _, "fxsr_opt",
	"pdpe1gb", "rdtscp", _, "lm", "3dnowext", "3dnow"};
static const char *const le1_ecx[32] = {
	"lahf_lm", "cmp_legacy", "svm", "extapic", "cr8_legacy", "abm", "sse4a", "misalignsse", "3dnowprefetch",
	"osvw", "ibs", "xop", "skinit", "wdt", _, "lwp", "fma4", "tce", _, "nodeid_msr", _, "tbm", "topoext",
	"perfctr_core", "perfctr_nb", _, "bpext", "ptsc", "perfctr_llc", "mwaitx"};
static const char *const l6_eax[32] = {
	"dts", "turbo", "arat", _, "pln", "ecmd", "pts", "hwp", "hwp_notify", "hwp_act_window", "hwp_epp",
	"hwp_pkg_req"};
static const char *const le7_edx[32] = {_, _, _, _, _, _, _, _, "invariant_tsc"};
static const char *const lhv3_eax[32] = {
	"vp_runtime", "time_ref_count", "synic", "stimer", "apic_access", "hypercall", "vp_index", "reset",
	"stat_pages", "ref_tsc", "guest_idle", "frequency_msrs"};
static const char *const lkvm1_eax[32] = {
	"clocksource", "nop_io_delay", "mmu_op", "clocksource2", "async_pf", "steal_time", "pv_eoi", "pv_unhalt", _,
	"pv_tlb_flush", "async_pf_vmexit", "pv_send_ipi", "poll_control", "pv_sched_yield", "async_pf_int",
	"msi_ext_dest_id", "hc_map_gpa_range", "migration_control"};
#undef _

const struct feat_reg feat_regs[] = {
	{1, 0, 3, "1.edx", l1_edx},
	{1, 0, 2, "1.ecx", l1_ecx},
	{6, 0, 0, "6.eax", l6_eax},
	{7, 0, 1, "7.ebx", l7_ebx},
	{7, 0, 2, "7.ecx", l7_ecx},
	{7, 0, 3, "7.edx", l7_edx},
	{0xd, 1, 0, "d.1.eax", ld1_eax},
	{0x80000001, 0, 3, "80000001.edx", le1_edx},
	{0x80000001, 0, 2, "80000001.ecx", le1_ecx},
	{0x80000007, 0, 3, "80000007.edx", le7_edx},
	{0x40000003, 0, 0, "hv.40000003.eax", lhv3_eax},
	{0x40000001, 0, 0, "kvm.40000001.eax", lkvm1_eax},
};
const int nfeat_regs = ARRAY_SIZE(feat_regs);

static uint32_t max_leaf(uint32_t base) { return cpuid(base, 0).eax; }

static bool leaf_ok(uint32_t leaf)
{
	if (leaf >= 0x40000000 && leaf < 0x50000000) {
		char name[13];
		uint32_t max;
		hv_name(name, &max);
		if (leaf == 0x40000003 && strcmp(name, "Microsoft Hv"))
			return false;
		if (leaf == 0x40000001 && strcmp(name, "KVMKVMKVM"))
			return false;
		return max >= leaf;
	}
	if (leaf >= 0x80000000)
		return max_leaf(0x80000000) >= leaf;
	return max_leaf(0) >= leaf;
}

/* feat_list writes the names of the set bits (unknown bits as "bitN"),
 * space separated; returns -1 if the leaf is absent. */
int feat_list(const struct feat_reg *f, char *buf, size_t n)
{
	buf[0] = 0;
	if (!leaf_ok(f->leaf))
		return -1;
	struct cpuid_regs r = cpuid(f->leaf, f->sub);
	uint32_t v = f->reg == 0 ? r.eax : f->reg == 1 ? r.ebx : f->reg == 2 ? r.ecx : r.edx;
	size_t pos = 0;
	for (int b = 0; b < 32; b++) {
		if (!(v & (1u << b)))
			continue;
		char tmp[24];
		const char *name = f->names[b];
		if (!name) {
			snprintf(tmp, sizeof(tmp), "bit%d", b);
			name = tmp;
		}
		int w = snprintf(buf + pos, pos < n ? n - pos : 0, "%s%s", pos ? " " : "", name);
		pos += (size_t)w;
	}
	if (pos >= n && n)
		buf[n - 1] = 0;
	return (int)pos;
}

static void regs_str(char *out, uint32_t a, uint32_t b, uint32_t c)
{
	memcpy(out, &a, 4);
	memcpy(out + 4, &b, 4);
	memcpy(out + 8, &c, 4);
	out[12] = 0;
}

void cpu_vendor(char out[13])
{
	struct cpuid_regs r = cpuid(0, 0);
	regs_str(out, r.ebx, r.edx, r.ecx);
}

void cpu_brand(char out[49])
{
	out[0] = 0;
	if (max_leaf(0x80000000) < 0x80000004)
		return;
	for (uint32_t i = 0; i < 3; i++) {
		struct cpuid_regs r = cpuid(0x80000002 + i, 0);
		memcpy(out + 16 * i, &r, 16);
	}
	out[48] = 0;
	/* trim leading and trailing spaces */
	char *s = out;
	while (*s == ' ')
		s++;
	memmove(out, s, strlen(s) + 1);
	for (size_t l = strlen(out); l && out[l - 1] == ' '; l--)
		out[l - 1] = 0;
}

void hv_name(char out[13], uint32_t *maxleaf)
{
	out[0] = 0;
	*maxleaf = 0;
	if (!(cpuid(1, 0).ecx & (1u << 31)))
		return;
	struct cpuid_regs r = cpuid(0x40000000, 0);
	regs_str(out, r.ebx, r.ecx, r.edx);
	for (int i = 0; i < 12; i++)
		if (out[i] && (out[i] < 32 || out[i] > 126))
			out[i] = '?';
	*maxleaf = r.eax;
}

bool hyperv(void)
{
	char n[13];
	uint32_t m;
	hv_name(n, &m);
	return !strcmp(n, "Microsoft Hv");
}

void cpu_fms(uint32_t *family, uint32_t *model, uint32_t *stepping)
{
	uint32_t a = cpuid(1, 0).eax;
	uint32_t fam = (a >> 8) & 0xF, mod = (a >> 4) & 0xF;
	if (fam == 0xF)
		fam += (a >> 20) & 0xFF;
	if (fam == 0x6 || fam >= 0xF)
		mod |= ((a >> 16) & 0xF) << 4;
	*family = fam;
	*model = mod;
	*stepping = a & 0xF;
}

/* TSC frequency the CPU or hypervisor states, 0 if it states none. */
uint64_t tsc_hz_cpuid(const char **how)
{
	*how = "none";
	if (max_leaf(0) >= 0x15) {
		struct cpuid_regs r = cpuid(0x15, 0);
		if (r.eax && r.ebx && r.ecx) {
			*how = "cpuid.15";
			return (uint64_t)r.ecx * r.ebx / r.eax;
		}
	}
	char n[13];
	uint32_t m;
	hv_name(n, &m);
	if (m >= 0x40000010 && strcmp(n, "Microsoft Hv")) {
		uint32_t khz = cpuid(0x40000010, 0).eax;
		if (khz) {
			*how = "cpuid.40000010";
			return (uint64_t)khz * 1000;
		}
	}
	return 0;
}
