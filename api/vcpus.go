package api

// The "vcpus" operation: every vCPU's state as the VMM sees it (`govmm
// info --vcpus`), for a guest that hangs or stalls. The VM pauses for the
// capture and runs on afterwards; one that was paused stays paused.

// VCPUTarget is a Target that can show its vCPUs' state. A Target without
// it answers the "vcpus" operation with an error.
type VCPUTarget interface {
	VCPUs() (VCPUsResult, error)
}

// VCPUsResult is the reply to "vcpus".
type VCPUsResult struct {
	// WasPaused: the VM was paused before the request (and stays so);
	// PauseMS is then 0.
	WasPaused bool `json:"was_paused"`
	// PauseMS is how long the capture kept a running VM paused, from the
	// pause request to the vCPUs running again.
	PauseMS float64 `json:"pause_ms"`
	VCPUs   []VCPU  `json:"vcpus"`
	// IOAPIC is the userspace IOAPIC's pins that are unmasked or have
	// anything asserted or in service (x86), and INTx the PCI functions'
	// INTx lines: with the LAPICs' ISR, IRR and TMR above, what a lost
	// level interrupt leaves behind.
	IOAPIC []IOAPICPin `json:"ioapic,omitempty"`
	INTx   []INTxLine  `json:"intx,omitempty"`
}

// IOAPICPin is one IOAPIC pin.
type IOAPICPin struct {
	Pin int `json:"pin"`
	// Entry is the redirection entry; Vector, Dest, Level (trigger
	// mode), Masked and RemoteIRR are decoded from it.
	Entry     uint64 `json:"entry"`
	Vector    uint8  `json:"vector"`
	Dest      uint8  `json:"dest"`
	Level     bool   `json:"level_triggered"`
	Masked    bool   `json:"masked"`
	RemoteIRR bool   `json:"remote_irr"`
	// Line is the devices' input, Resample the resample irqfds' input;
	// Asserted their OR, Requested the pin's IRR bit (a request not
	// delivered yet), Resampler whether an irqfd's owner hears its EOIs.
	Line      bool `json:"line"`
	Resample  bool `json:"resample_input"`
	Asserted  bool `json:"asserted"`
	Requested bool `json:"requested"`
	Resampler bool `json:"resampler"`
	// Delivered counts the interrupts the pin sent, EOIs the EOIs that
	// cleared its Remote IRR, EdgeClears the Remote IRRs the guest
	// cleared by reprogramming the entry edge-triggered.
	Delivered  uint64 `json:"delivered"`
	EOIs       uint64 `json:"eois"`
	EdgeClears uint64 `json:"edge_clears"`
}

// INTxLine is one PCI function's INTx line as its transport keeps it.
type INTxLine struct {
	Device string `json:"device"`
	GSI    uint32 `json:"gsi"`
	// ISR is the virtio ISR (bit 0 queue, bit 1 configuration), MSIX
	// whether MSI-X is on (INTx is off then), Asserted whether the
	// transport signalled the line since the last EOI, Raises how many
	// times it did.
	ISR      uint8  `json:"isr"`
	MSIX     bool   `json:"msix"`
	Asserted bool   `json:"asserted"`
	Raises   uint64 `json:"raises"`
}

// VCPU is one vCPU's state, decoded.
type VCPU struct {
	Index int `json:"index"`
	// MPState is the multiprocessing state: "runnable", "halted",
	// "uninitialized" (an AP before INIT/SIPI), "init-received" (waiting
	// for SIPI), "sipi-received".
	MPState string `json:"mp_state"`
	// Mode is "real", "protected" or "long"; CodeBits the default
	// operand size of the code running (16, 32 or 64); VM86 is virtual-8086
	// mode (inside protected mode).
	Mode     string `json:"mode"`
	CodeBits int    `json:"code_bits"`
	VM86     bool   `json:"vm86,omitempty"`
	CPL      int    `json:"cpl"`
	CS       uint16 `json:"cs"`
	SS       uint16 `json:"ss"`
	RIP      uint64 `json:"rip"`
	RSP      uint64 `json:"rsp"`
	RFLAGS   RFLAGS `json:"rflags"`
	CR0      uint64 `json:"cr0"`
	CR2      uint64 `json:"cr2"`
	CR3      uint64 `json:"cr3"`
	CR4      uint64 `json:"cr4"`
	EFER     uint64 `json:"efer"`
	// GPRs are the general registers by name (rax ... r15).
	GPRs map[string]uint64 `json:"gprs"`
	// Code is up to 15 bytes at CS:RIP, in hex, read through the guest's
	// page tables ("" when they do not map RIP).
	Code   string `json:"code,omitempty"`
	Events Events `json:"events"`
	LAPIC  LAPIC  `json:"lapic"`
}

// RFLAGS is the flags register decoded.
type RFLAGS struct {
	Value uint64 `json:"value"`
	// Set names the flags that are set, low bit first ("CF", "PF", "AF",
	// "ZF", "SF", "TF", "IF", "DF", "OF", "NT", "RF", "VM", "AC", "VIF",
	// "VIP", "ID").
	Set  []string `json:"set"`
	IF   bool     `json:"if"`
	IOPL int      `json:"iopl"`
}

// Events are a vCPU's pending and injected events.
type Events struct {
	Exception *Exception `json:"exception,omitempty"`
	Interrupt *Interrupt `json:"interrupt,omitempty"`
	// NMI: "pending", "injected" or "" (none), NMIMasked whether NMIs
	// are blocked (one is being handled).
	NMI       string `json:"nmi,omitempty"`
	NMIMasked bool   `json:"nmi_masked"`
	// Shadow is the interrupt shadow: "sti", "mov-ss", "sti+mov-ss"
	// (some accelerators keep one bit and report both), or "".
	Shadow string `json:"shadow,omitempty"`
	// SIPIVector is the vector of a received SIPI, meaningful in the
	// sipi-received MP state.
	SIPIVector uint32 `json:"sipi_vector,omitempty"`
}

// Exception is a pending or injected exception.
type Exception struct {
	Vector    uint8   `json:"vector"`
	Name      string  `json:"name"` // "#GP", "#PF", ...
	State     string  `json:"state"`
	ErrorCode *uint32 `json:"error_code,omitempty"`
	// Payload is the pending #PF's CR2 or #DB's DR6, when the
	// accelerator keeps it apart.
	Payload *uint64 `json:"payload,omitempty"`
}

// Interrupt is an injected external (or software) interrupt.
type Interrupt struct {
	Vector uint8 `json:"vector"`
	Soft   bool  `json:"soft,omitempty"`
}

// LAPIC is the local APIC decoded from its register page.
type LAPIC struct {
	// Mode is "disabled", "xapic" or "x2apic" (IA32_APIC_BASE's EN and
	// EXTD bits); BSP its BSP flag, APICBase the whole MSR.
	Mode     string `json:"mode"`
	BSP      bool   `json:"bsp"`
	APICBase uint64 `json:"apic_base"`
	// SoftwareEnabled is SVR bit 8; SpuriousVector SVR's vector.
	SoftwareEnabled bool   `json:"software_enabled"`
	SpuriousVector  uint8  `json:"spurious_vector"`
	ID              uint32 `json:"id"`
	TPR             uint8  `json:"tpr"`
	// PPR is derived from TPR and the highest in-service vector as the
	// SDM defines it (10.8.3.1): accelerators do not all save it.
	PPR uint8 `json:"ppr"`
	// ISR, TMR and IRR are the vectors set in each 256-bit register,
	// lowest first.
	ISR   []int    `json:"isr"`
	TMR   []int    `json:"tmr"`
	IRR   []int    `json:"irr"`
	Timer LAPICLVT `json:"timer"`
	// InitialCount and CurrentCount are TMICT and TMCCT; Divide is the
	// divisor TDCR selects (1 to 128).
	InitialCount uint32 `json:"initial_count"`
	CurrentCount uint32 `json:"current_count"`
	Divide       int    `json:"divide"`
	// TSCDeadline is IA32_TSC_DEADLINE and TSC the vCPU's TSC at the
	// capture, when the accelerator gives them (nil otherwise); a
	// deadline of 0 is a disarmed timer.
	TSCDeadline *uint64 `json:"tsc_deadline,omitempty"`
	TSC         *uint64 `json:"tsc,omitempty"`
}

// LAPICLVT is the timer's local vector table entry.
type LAPICLVT struct {
	Raw    uint32 `json:"raw"`
	Vector uint8  `json:"vector"`
	// Mode is "one-shot", "periodic", "tsc-deadline" or "reserved".
	Mode   string `json:"mode"`
	Masked bool   `json:"masked"`
	// Pending is the delivery-status bit: sent, not yet accepted.
	Pending bool `json:"pending,omitempty"`
}

// VCPUs asks for every vCPU's state.
func (c *Client) VCPUs() (VCPUsResult, error) {
	var res VCPUsResult
	return res, c.call(request{Op: "vcpus"}, nil, &res)
}
