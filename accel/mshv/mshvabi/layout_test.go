package mshvabi

import (
	"bufio"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// cLayout is one struct of testdata/mshv-layouts.txt (a copy of
// /work/shared/reference/mshv-layouts.txt, the rust-vmm bindgen assertions).
type cLayout struct {
	size   int
	fields map[string]int
	order  []string
}

func parseLayouts(t *testing.T) map[string]*cLayout {
	t.Helper()
	f, err := os.Open("testdata/mshv-layouts.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]*cLayout{}
	var cur *cLayout
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "## ") {
			name, rest, _ := strings.Cut(line[3:], ":")
			rest = strings.TrimSpace(rest)
			cur = nil
			if sz, ok := strings.CutPrefix(rest, "size "); ok {
				n, err := strconv.Atoi(sz)
				if err != nil {
					t.Fatalf("bad size line %q", line)
				}
				cur = &cLayout{size: n, fields: map[string]int{}}
				out[name] = cur
			}
			continue
		}
		if cur == nil || line == "" {
			continue
		}
		name, off, ok := strings.Cut(line, " @ ")
		if !ok {
			t.Fatalf("bad field line %q", line)
		}
		n, err := strconv.Atoi(off)
		if err != nil {
			t.Fatalf("bad offset in %q", line)
		}
		cur.fields[name] = n
		cur.order = append(cur.order, name)
	}
	return out
}

func norm(s string) string { return strings.ToLower(strings.ReplaceAll(s, "_", "")) }

type goLayout struct {
	c     string
	v     any
	csize int               // packed C size when Go pads the tail (0: same)
	names map[string]string // C field -> Go field, where normalisation does not match
}

var goLayouts = []goLayout{
	{c: "mshv_create_partition", v: CreatePartition{}, names: map[string]string{"pt_flags": "Flags", "pt_isolation": "Isolation"}},
	{c: "mshv_create_partition_v2", v: CreatePartitionV2{}, names: map[string]string{"pt_flags": "Flags", "pt_isolation": "Isolation",
		"pt_num_cpu_fbanks": "NumCPUFBanks", "pt_rsvd": "Rsvd", "pt_cpu_fbanks": "CPUFBanks", "pt_rsvd1": "Rsvd1", "pt_disabled_xsave": "DisabledXSave"}},
	{c: "mshv_create_vp", v: CreateVP{}},
	{c: "mshv_user_mem_region", v: UserMemRegion{}},
	{c: "mshv_user_irqfd", v: UserIRQFD{}},
	{c: "mshv_user_ioeventfd", v: UserIOEventFD{}},
	{c: "mshv_user_irq_entry", v: UserIRQEntry{}},
	{c: "mshv_user_irq_table", v: UserIRQTable{}, names: map[string]string{"entries": "-end"}},
	{c: "mshv_gpap_access_bitmap", v: GPAPAccessBitmap{}},
	{c: "mshv_root_hvcall", v: RootHvcall{}},
	{c: "mshv_run_vp", v: Message{}, names: map[string]string{"msg_buf": "Header"}},
	{c: "mshv_get_set_vp_state", v: GetSetVPState{}, names: map[string]string{"type_": "Type"}},
	{c: "hv_message_header", v: MessageHeader{}, names: map[string]string{"message_flags": "Flags"}},
	{c: "hv_message", v: Message{}, names: map[string]string{"u": "Payload"}},
	{c: "hv_x64_segment_register", v: SegmentRegister{}},
	{c: "hv_x64_table_register", v: TableRegister{}},
	{c: "hv_x64_intercept_message_header", v: InterceptMessageHeader{}, names: map[string]string{"cs_segment": "CS"}},
	{c: "hv_x64_memory_intercept_message", v: MemoryInterceptMessage{}, names: map[string]string{"guest_virtual_address": "GVA", "guest_physical_address": "GPA"}},
	{c: "hv_x64_io_port_intercept_message", v: IOPortInterceptMessage{}, names: map[string]string{"ds_segment": "DS", "es_segment": "ES"}},
	{c: "hv_x64_cpuid_intercept_message", v: CPUIDInterceptMessage{}, names: map[string]string{"default_result_rax": "DefaultRAX",
		"default_result_rcx": "DefaultRCX", "default_result_rdx": "DefaultRDX", "default_result_rbx": "DefaultRBX"}},
	{c: "hv_x64_msr_intercept_message", v: MSRInterceptMessage{}},
	{c: "hv_x64_exception_intercept_message", v: ExceptionInterceptMessage{}, names: map[string]string{"ds_segment": "DS", "ss_segment": "SS"}},
	{c: "hv_x64_halt_message", v: InterceptMessageHeader{}, names: map[string]string{"header": "VPIndex"}},
	{c: "hv_x64_unrecoverable_exception_message", v: InterceptMessageHeader{}, names: map[string]string{"header": "VPIndex"}},
	{c: "hv_x64_apic_eoi_message", v: APICEOIMessage{}},
	{c: "hv_x64_interruption_deliverable_message", v: InterruptionDeliverableMessage{}},
	{c: "hv_x64_sipi_intercept_message", v: SIPIInterceptMessage{}},
	{c: "hv_x64_sint_deliverable_message", v: SINTDeliverableMessage{}},
	{c: "hv_x64_hypercall_intercept_message", v: HypercallInterceptMessage{}, csize: SizeofHypercallInterceptMessage},
	{c: "hv_register_assoc", v: RegisterAssoc{}},
	{c: "hv_register_value", v: RegisterValue{}, names: map[string]string{"reg128": "Low", "reg64": "Low", "reg32": "Low", "reg16": "Low",
		"reg8": "Low", "fp": "Low", "fp_control_status": "Low", "xmm_control_status": "Low", "segment": "Low", "table": "Low",
		"explicit_suspend": "Low", "intercept_suspend": "Low", "internal_activity": "Low", "interrupt_state": "Low",
		"pending_interruption": "Low", "npiep_config": "Low", "pending_exception_event": "Low",
		"pending_virtualization_fault_event": "Low", "sev_control": "Low"}},
	{c: "hv_input_get_vp_registers", v: InputVPRegisters{}, names: map[string]string{"names": "-end"}},
	{c: "hv_input_set_vp_registers", v: InputVPRegisters{}, names: map[string]string{"elements": "-end"}},
	{c: "hv_input_assert_virtual_interrupt", v: InputAssertVirtualInterrupt{}},
	{c: "hv_input_install_intercept", v: InputInstallIntercept{}},
	{c: "hv_input_register_intercept_result", v: InputRegisterInterceptResult{}, csize: SizeofInputRegisterInterceptResult},
	{c: "hv_register_intercept_result_parameters", v: CPUIDResultParameters{}, names: map[string]string{"cpuid": "EAX", "msr": "EAX"}},
	{c: "hv_register_x64_cpuid_result_parameters", v: CPUIDResultParameters{}, names: map[string]string{"input": "EAX"}},
	{c: "hv_register_x64_msr_result_parameters", v: MSRResultParameters{}},
	{c: "hv_input_translate_virtual_address", v: InputTranslateVirtualAddress{}},
	{c: "hv_output_translate_virtual_address", v: OutputTranslateVirtualAddress{}, names: map[string]string{"translation_result": "ResultCode"}},
	{c: "hv_input_get_partition_property", v: InputGetPartitionProperty{}},
	{c: "hv_output_get_partition_property", v: OutputGetPartitionProperty{}},
	{c: "hv_input_set_partition_property", v: InputSetPartitionProperty{}},
	{c: "hv_input_get_partition_property_ex", v: InputGetPartitionPropertyEx{}},
	{c: "mshv_partition_property", v: PartitionProperty{}},
	{c: "hv_vp_state_data_xsave", v: VPStateDataXSave{}},
	{c: "hv_local_interrupt_controller_state", v: LocalInterruptControllerState{}},
	{c: "hv_synthetic_timers_state", v: SyntheticTimersState{}},
	{c: "hv_stimer_state", v: StimerState{}},
	{c: "hv_vp_register_page", v: VPRegisterPage{}},
	{c: "hv_input_signal_event_direct", v: InputSignalEventDirect{}},
	{c: "hv_input_post_message_direct", v: InputPostMessageDirect{}},
	{c: "hv_input_get_vp_cpuid_values", v: InputGetVPCPUIDValues{}, names: map[string]string{"cpuid_leaf_info": "-end"}},
	{c: "hv_cpuid_leaf_info", v: CPUIDLeafInfo{}},
	{c: "hv_output_get_vp_cpuid_values", v: OutputGetVPCPUIDValues{}, names: map[string]string{"as_uint32": "EAX"}},
	{c: "hv_input_read_gpa", v: InputReadGPA{}},
	{c: "hv_output_read_gpa", v: OutputReadGPA{}},
	{c: "hv_input_write_gpa", v: InputWriteGPA{}},
}

// TestLayouts checks the size of every ABI struct and the offset of every
// field the reference lists.
func TestLayouts(t *testing.T) {
	ref := parseLayouts(t)
	for _, g := range goLayouts {
		cl, ok := ref[g.c]
		if !ok {
			t.Errorf("%s: not in mshv-layouts.txt", g.c)
			continue
		}
		rt := reflect.TypeOf(g.v)
		want := cl.size
		if g.csize != 0 {
			if g.csize != cl.size {
				t.Errorf("%s: Sizeof constant %d, reference %d", g.c, g.csize, cl.size)
			}
			if int(rt.Size()) < cl.size || int(rt.Size()) >= cl.size+8 {
				t.Errorf("%s: Go size %d is not the C size %d plus tail padding", g.c, rt.Size(), cl.size)
			}
		} else if int(rt.Size()) != want {
			// Headers followed by a flexible array: the Go type is the header.
			if !hasEnd(g) || int(rt.Size()) != endOffset(cl, g) {
				t.Errorf("%s: Go size %d, C size %d", g.c, rt.Size(), want)
			}
		}
		for _, cf := range cl.order {
			gf := g.names[cf]
			if gf == "-end" {
				if int(rt.Size()) != cl.fields[cf] {
					t.Errorf("%s.%s: trailing array at %d, Go header size %d", g.c, cf, cl.fields[cf], rt.Size())
				}
				continue
			}
			var f reflect.StructField
			found := false
			if gf != "" {
				f, found = rt.FieldByName(gf)
			} else {
				for i := 0; i < rt.NumField(); i++ {
					if norm(rt.Field(i).Name) == norm(cf) {
						f, found = rt.Field(i), true
						break
					}
				}
			}
			if !found {
				t.Errorf("%s.%s: no Go field", g.c, cf)
				continue
			}
			if int(f.Offset) != cl.fields[cf] {
				t.Errorf("%s.%s: Go %s at %d, C at %d", g.c, cf, f.Name, f.Offset, cl.fields[cf])
			}
		}
	}
}

func hasEnd(g goLayout) bool {
	for _, v := range g.names {
		if v == "-end" {
			return true
		}
	}
	return false
}

func endOffset(cl *cLayout, g goLayout) int {
	for c, v := range g.names {
		if v == "-end" {
			return cl.fields[c]
		}
	}
	return -1
}

// TestRequestNumbers pins the ioctl numbers to the table in mshv-abi.md §1.1.
func TestRequestNumbers(t *testing.T) {
	for _, c := range []struct {
		name string
		got  uint32
		want uint32
	}{
		{"CREATE_PARTITION", ReqCreatePartition, 0x4010B800},
		{"ROOT_HVCALL", ReqRootHvcall, 0xC020B807},
		{"GET_HOST_PARTITION_PROPERTY", ReqGetHostPartitionProp, 0xC010B801},
		{"INITIALIZE_PARTITION", ReqInitializePartition, 0x0000B800},
		{"CREATE_VP", ReqCreateVP, 0x4004B801},
		{"SET_GUEST_MEMORY", ReqSetGuestMemory, 0x4020B802},
		{"IRQFD", ReqIRQFD, 0x4010B803},
		{"IOEVENTFD", ReqIOEventFD, 0x4020B804},
		{"SET_MSI_ROUTING", ReqSetMSIRouting, 0x4008B805},
		{"GET_GPAP_ACCESS_BITMAP", ReqGetGPAPAccessBitmap, 0xC020B806},
		{"RUN_VP", ReqRunVP, 0x8100B800},
		{"GET_VP_STATE", ReqGetVPState, 0xC010B801},
		{"SET_VP_STATE", ReqSetVPState, 0xC010B802},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

func TestMSRRegisterName(t *testing.T) {
	for _, m := range MSRIndexList() {
		if _, ok := MSRRegisterName(m); !ok {
			t.Errorf("MSR %#x listed but has no register name", m)
		}
	}
	for _, c := range []struct{ msr, reg uint32 }{{0x200, RegMTRRPhysBase0}, {0x20F, RegMTRRPhysMask0 + 7},
		{0x26F, RegMTRRFix4KC0000 + 7}, {0x4000009F, RegSINT0 + 15}, {0xC0000080, RegEFER},
		// CET (hvgdk_mini.h HV_X64_REGISTER_U_CET 0x8008C, S_CET
		// 0x8008D, PL0_SSP..PL3_SSP 0x8008F-0x80092,
		// INTERRUPT_SSP_TABLE_ADDR 0x80093).
		{0x6A0, 0x8008C}, {0x6A2, 0x8008D}, {0x6A4, 0x8008F}, {0x6A7, 0x80092}, {0x6A8, 0x80093},
		// IA32_TSC_DEADLINE: OpenVMM's hvdef TscDeadline 0x00080095
		// (see RegTSCDeadline).
		{0x6E0, 0x80095}, {0x3B, 0x80096}} {
		if r, ok := MSRRegisterName(c.msr); !ok || r != c.reg {
			t.Errorf("MSRRegisterName(%#x) = %#x, %v; want %#x", c.msr, r, ok, c.reg)
		}
	}
	if _, ok := MSRRegisterName(0x12345); ok {
		t.Errorf("MSR 0x12345 has a register name")
	}
}

func TestAlignedBuffer(t *testing.T) {
	b := AlignedBuffer(4096)
	if len(b) != 4096 || addr(b)%4096 != 0 {
		t.Fatalf("AlignedBuffer: len %d addr %#x", len(b), addr(b))
	}
}
