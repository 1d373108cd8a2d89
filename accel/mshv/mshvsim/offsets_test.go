package mshvsim

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

// layouts parses testdata/mshv-layouts.txt (a copy of the reference's
// bindgen layout assertions): struct -> size and field -> offset.
func layouts(t *testing.T) (map[string]int, map[string]map[string]int) {
	t.Helper()
	f, err := os.Open("testdata/mshv-layouts.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sizes, fields := map[string]int{}, map[string]map[string]int{}
	cur := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(l, "## ") {
			name, rest, _ := strings.Cut(l[3:], ":")
			cur = ""
			if n, ok := strings.CutPrefix(strings.TrimSpace(rest), "size "); ok {
				cur = name
				sizes[name], _ = strconv.Atoi(n)
				fields[name] = map[string]int{}
			}
			continue
		}
		if name, off, ok := strings.Cut(l, " @ "); ok && cur != "" {
			fields[cur][name], _ = strconv.Atoi(off)
		}
	}
	return sizes, fields
}

// TestOffsets pins every offset the simulator parses or produces to the
// reference layouts.
func TestOffsets(t *testing.T) {
	sizes, fields := layouts(t)
	type f struct {
		st, field string
		sim       int
	}
	for _, c := range []f{
		{"mshv_create_partition_v2", "pt_flags", cpFlags}, {"mshv_create_partition_v2", "pt_isolation", cpIsolation},
		{"mshv_create_partition_v2", "pt_num_cpu_fbanks", cpNumFBanks}, {"mshv_create_partition_v2", "pt_rsvd", cpRsvd},
		{"mshv_create_partition_v2", "pt_cpu_fbanks", cpFBanks}, {"mshv_create_partition_v2", "pt_rsvd1", cpRsvd1},
		{"mshv_create_partition_v2", "pt_disabled_xsave", cpDisabledXSave},
		{"mshv_user_mem_region", "size", umSize}, {"mshv_user_mem_region", "guest_pfn", umGuestPFN},
		{"mshv_user_mem_region", "userspace_addr", umUserAddr}, {"mshv_user_mem_region", "flags", umFlags},
		{"mshv_user_mem_region", "rsvd", umRsvd},
		{"mshv_user_irqfd", "fd", ifFD}, {"mshv_user_irqfd", "resamplefd", ifResampleFD}, {"mshv_user_irqfd", "gsi", ifGSI},
		{"mshv_user_irqfd", "flags", ifFlags},
		{"mshv_user_ioeventfd", "datamatch", ieDatamatch}, {"mshv_user_ioeventfd", "addr", ieAddr},
		{"mshv_user_ioeventfd", "len", ieLen}, {"mshv_user_ioeventfd", "fd", ieFD}, {"mshv_user_ioeventfd", "flags", ieFlags},
		{"mshv_user_ioeventfd", "rsvd", ieRsvd},
		{"mshv_user_irq_table", "nr", itNr}, {"mshv_user_irq_table", "rsvd", itRsvd}, {"mshv_user_irq_table", "entries", itEntries},
		{"mshv_user_irq_entry", "gsi", irqGSI}, {"mshv_user_irq_entry", "address_lo", irqAddrLo},
		{"mshv_user_irq_entry", "address_hi", irqAddrHi}, {"mshv_user_irq_entry", "data", irqData},
		{"mshv_gpap_access_bitmap", "access_type", gpType}, {"mshv_gpap_access_bitmap", "access_op", gpOp},
		{"mshv_gpap_access_bitmap", "rsvd", gpRsvd}, {"mshv_gpap_access_bitmap", "page_count", gpCount},
		{"mshv_gpap_access_bitmap", "gpap_base", gpBase}, {"mshv_gpap_access_bitmap", "bitmap_ptr", gpBitmap},
		{"mshv_root_hvcall", "code", hcCode}, {"mshv_root_hvcall", "reps", hcReps}, {"mshv_root_hvcall", "in_sz", hcInSz},
		{"mshv_root_hvcall", "out_sz", hcOutSz}, {"mshv_root_hvcall", "status", hcStatus}, {"mshv_root_hvcall", "rsvd", hcRsvd},
		{"mshv_root_hvcall", "in_ptr", hcInPtr}, {"mshv_root_hvcall", "out_ptr", hcOutPtr},
		{"mshv_get_set_vp_state", "type_", vsType}, {"mshv_get_set_vp_state", "rsvd", vsRsvd},
		{"mshv_get_set_vp_state", "buf_sz", vsBufSz}, {"mshv_get_set_vp_state", "buf_ptr", vsBufPtr},
		{"hv_message_header", "message_type", msgType}, {"hv_message_header", "payload_size", msgPayloadSize},
		{"hv_message_header", "message_flags", msgFlags}, {"hv_message", "u", msgPayload},
		{"hv_x64_intercept_message_header", "vp_index", ihVPIndex}, {"hv_x64_intercept_message_header", "intercept_access_type", ihAccess},
		{"hv_x64_intercept_message_header", "execution_state", ihExecState}, {"hv_x64_intercept_message_header", "cs_segment", ihCS},
		{"hv_x64_intercept_message_header", "rip", ihRIP}, {"hv_x64_intercept_message_header", "rflags", ihRFLAGS},
		{"hv_x64_memory_intercept_message", "cache_type", mmCacheType}, {"hv_x64_memory_intercept_message", "instruction_byte_count", mmInsnCount},
		{"hv_x64_memory_intercept_message", "memory_access_info", mmAccessInfo}, {"hv_x64_memory_intercept_message", "guest_virtual_address", mmGVA},
		{"hv_x64_memory_intercept_message", "guest_physical_address", mmGPA}, {"hv_x64_memory_intercept_message", "instruction_bytes", mmInsnBytes},
		{"hv_x64_io_port_intercept_message", "port_number", ioPort}, {"hv_x64_io_port_intercept_message", "access_info", ioAccessInfo},
		{"hv_x64_io_port_intercept_message", "rax", ioRAX}, {"hv_x64_io_port_intercept_message", "instruction_bytes", ioInsnBytes},
		{"hv_x64_io_port_intercept_message", "ds_segment", ioDS}, {"hv_x64_io_port_intercept_message", "es_segment", ioES},
		{"hv_x64_io_port_intercept_message", "rcx", ioRCX}, {"hv_x64_io_port_intercept_message", "rsi", ioRSI},
		{"hv_x64_io_port_intercept_message", "rdi", ioRDI},
		{"hv_x64_apic_eoi_message", "vp_index", eoiVPIndex}, {"hv_x64_apic_eoi_message", "interrupt_vector", eoiVector},
		{"hv_x64_segment_register", "base", segBase}, {"hv_x64_segment_register", "limit", segLimit},
		{"hv_x64_segment_register", "selector", segSelector},
		{"hv_register_assoc", "name", raName}, {"hv_register_assoc", "reserved1", raRsvd1}, {"hv_register_assoc", "reserved2", raRsvd2},
		{"hv_register_assoc", "value", raValue},
		{"hv_input_get_vp_registers", "vp_index", vrVPIndex}, {"hv_input_get_vp_registers", "input_vtl", vrVTL},
		{"hv_input_get_vp_registers", "names", vrList}, {"hv_input_set_vp_registers", "elements", vrList},
		{"hv_input_assert_virtual_interrupt", "control", aiControl}, {"hv_input_assert_virtual_interrupt", "dest_addr", aiDest},
		{"hv_input_assert_virtual_interrupt", "vector", aiVector}, {"hv_input_assert_virtual_interrupt", "target_vtl", aiVTL},
		{"hv_input_translate_virtual_address", "vp_index", tvVPIndex}, {"hv_input_translate_virtual_address", "control_flags", tvFlags},
		{"hv_input_translate_virtual_address", "gva_page", tvGVAPage}, {"hv_output_translate_virtual_address", "translation_result", tvOutResult},
		{"hv_output_translate_virtual_address", "gpa_page", tvOutGPAPage},
		{"hv_input_get_partition_property", "property_code", ppCode}, {"hv_input_set_partition_property", "property_value", ppValue},
		{"hv_input_register_intercept_result", "vp_index", riVPIndex}, {"hv_input_register_intercept_result", "intercept_type", riType},
		{"hv_input_register_intercept_result", "parameters", riParams},
		{"hv_register_x64_cpuid_result_parameters", "input", crEAX}, {"hv_register_x64_cpuid_result_parameters", "result", crResult},
		{"hv_input_get_vp_cpuid_values", "vp_index", gcVPIndex}, {"hv_input_get_vp_cpuid_values", "flags", gcFlags},
		{"hv_input_get_vp_cpuid_values", "cpuid_leaf_info", gcLeaves}, {"hv_cpuid_leaf_info", "eax", gcLeafEAX}, {"hv_cpuid_leaf_info", "ecx", gcLeafECX},
		{"hv_local_interrupt_controller_state", "apic_id", lsAPICID},
		{"hv_vp_register_page", "version", rpVersion}, {"hv_vp_register_page", "isvalid", rpIsValid}, {"hv_vp_register_page", "dirty", rpDirty},
		{"hv_vp_register_page", "cr0", rpCR0}, {"hv_vp_register_page", "cr3", rpCR3}, {"hv_vp_register_page", "cr4", rpCR4},
		{"hv_vp_register_page", "cr8", rpCR8}, {"hv_vp_register_page", "efer", rpEFER},
		{"hv_vp_register_page", "pending_interruption", rpPending}, {"hv_vp_register_page", "interrupt_state", rpIntrSt},
	} {
		got, ok := fields[c.st][c.field]
		if !ok {
			t.Errorf("%s.%s: not in the reference", c.st, c.field)
			continue
		}
		if got != c.sim {
			t.Errorf("%s.%s: simulator uses offset %d, reference %d", c.st, c.field, c.sim, got)
		}
	}
	for _, c := range []struct {
		st  string
		sim int
	}{{"mshv_create_partition", cpSizeV1}, {"mshv_create_partition_v2", cpSizeV2}, {"mshv_user_mem_region", umStructSize},
		{"mshv_user_irq_entry", irqEntrySize}, {"hv_register_assoc", raSize}, {"hv_input_register_intercept_result", riSize},
		{"hv_cpuid_leaf_info", gcLeafSize}} {
		if sizes[c.st] != c.sim {
			t.Errorf("sizeof %s: simulator uses %d, reference %d", c.st, c.sim, sizes[c.st])
		}
	}
	// The register page's GPR/RIP/RFLAGS/XMM/segment block is between
	// dirty (4 bytes at 4) and reserved (at 152) and after it.
	if rpGPRs != fields["hv_vp_register_page"]["dirty"]+4 || rpRFLAGS+8 != fields["hv_vp_register_page"]["reserved"] ||
		rpSegs+6*16 != fields["hv_vp_register_page"]["cr0"] {
		t.Errorf("register page block offsets: gprs %d rflags %d segs %d", rpGPRs, rpRFLAGS, rpSegs)
	}
	// Request numbers: _IOC(dir, 0xB8, nr, size).
	ioc := func(dir, nr, size uint32) uint32 { return dir<<30 | size<<16 | 0xB8<<8 | nr }
	for _, c := range []struct{ got, want uint32 }{
		{reqCreatePartition, ioc(1, 0, uint32(sizes["mshv_create_partition"]))},
		{reqRootHvcall, ioc(3, 7, uint32(sizes["mshv_root_hvcall"]))},
		{reqSetGuestMemory, ioc(1, 2, uint32(sizes["mshv_user_mem_region"]))},
		{reqIRQFD, ioc(1, 3, uint32(sizes["mshv_user_irqfd"]))},
		{reqIOEventFD, ioc(1, 4, uint32(sizes["mshv_user_ioeventfd"]))},
		{reqSetMSIRouting, ioc(1, 5, uint32(sizes["mshv_user_irq_table"]))},
		{reqGPAPBitmap, ioc(3, 6, uint32(sizes["mshv_gpap_access_bitmap"]))},
		{reqRunVP, ioc(2, 0, uint32(sizes["mshv_run_vp"]))},
		{reqGetVPState, ioc(3, 1, uint32(sizes["mshv_get_set_vp_state"]))},
		{reqSetVPState, ioc(3, 2, uint32(sizes["mshv_get_set_vp_state"]))},
		{reqCreateVP, ioc(1, 1, uint32(sizes["mshv_create_vp"]))},
	} {
		if c.got != c.want {
			t.Errorf("request %#x, want %#x", c.got, c.want)
		}
	}
}
