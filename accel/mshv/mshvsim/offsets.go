package mshvsim

// Byte offsets of the ABI structs as the simulator reads them, from its own
// reading of mshv-abi.md (checked against mshv-layouts.txt by
// offsets_test.go). They are independent of mshvabi's Go structs on
// purpose.
const (
	// mshv_create_partition(_v2)
	cpFlags, cpIsolation, cpNumFBanks, cpRsvd, cpFBanks, cpRsvd1, cpDisabledXSave = 0, 8, 16, 18, 24, 40, 56
	cpSizeV1, cpSizeV2                                                            = 16, 64
	// mshv_user_mem_region
	umSize, umGuestPFN, umUserAddr, umFlags, umRsvd, umStructSize = 0, 8, 16, 24, 25, 32
	// mshv_user_irqfd
	ifFD, ifResampleFD, ifGSI, ifFlags = 0, 4, 8, 12
	// mshv_user_ioeventfd
	ieDatamatch, ieAddr, ieLen, ieFD, ieFlags, ieRsvd = 0, 8, 16, 20, 24, 28
	// mshv_user_irq_table / mshv_user_irq_entry
	itNr, itRsvd, itEntries                             = 0, 4, 8
	irqGSI, irqAddrLo, irqAddrHi, irqData, irqEntrySize = 0, 4, 8, 12, 16
	// mshv_gpap_access_bitmap
	gpType, gpOp, gpRsvd, gpCount, gpBase, gpBitmap = 0, 1, 2, 8, 16, 24
	// mshv_root_hvcall
	hcCode, hcReps, hcInSz, hcOutSz, hcStatus, hcRsvd, hcInPtr, hcOutPtr = 0, 2, 4, 6, 8, 10, 16, 24
	// mshv_get_set_vp_state
	vsType, vsRsvd, vsBufSz, vsBufPtr = 0, 1, 4, 8
	// hv_message
	msgType, msgPayloadSize, msgFlags, msgPayload = 0, 4, 5, 16
	// hv_x64_intercept_message_header (payload-relative)
	ihVPIndex, ihInsnLen, ihAccess, ihExecState, ihCS, ihRIP, ihRFLAGS = 0, 4, 5, 6, 8, 24, 32
	// hv_x64_memory_intercept_message
	mmCacheType, mmInsnCount, mmAccessInfo, mmGVA, mmGPA, mmInsnBytes = 40, 44, 45, 48, 56, 64
	// hv_x64_io_port_intercept_message
	ioPort, ioAccessInfo, ioInsnCount, ioRAX, ioInsnBytes, ioDS, ioES, ioRCX, ioRSI, ioRDI = 40, 42, 43, 48, 56, 72, 88, 104, 112, 120
	// hv_x64_apic_eoi_message
	eoiVPIndex, eoiVector = 0, 4
	// hv_x64_interruption_deliverable_message
	idType = 40
	// hv_x64_segment_register
	segBase, segLimit, segSelector, segAttr = 0, 8, 12, 14
	// hv_register_assoc
	raName, raRsvd1, raRsvd2, raValue, raSize = 0, 4, 8, 16, 32
	// hv_input_get/set_vp_registers header
	vrPartition, vrVPIndex, vrVTL, vrList = 0, 8, 12, 16
	// hv_input_assert_virtual_interrupt
	aiControl, aiDest, aiVector, aiVTL = 8, 16, 24, 28
	// hv_input_translate_virtual_address / output
	tvVPIndex, tvFlags, tvGVAPage, tvOutResult, tvOutGPAPage = 8, 16, 24, 0, 8
	// hv_input_get/set_partition_property
	ppCode, ppValue = 8, 16
	// hv_input_register_intercept_result (+ cpuid parameters)
	riVPIndex, riType, riParams, riSize         = 8, 12, 16, 60
	crEAX, crECX, crSubleaf, crAlways, crResult = 0, 4, 8, 9, 12
	// hv_input_get_vp_cpuid_values / hv_cpuid_leaf_info
	gcVPIndex, gcFlags, gcLeaves, gcLeafSize, gcLeafEAX, gcLeafECX = 8, 12, 24, 24, 0, 4
	// hv_local_interrupt_controller_state
	lsAPICID = 0
)
