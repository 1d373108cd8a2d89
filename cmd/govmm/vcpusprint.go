package main

// Printing the control socket's "vcpus" reply (`govmm info --vcpus`),
// shared by both builds' clients.

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"govmm/api"
)

// mpStateText says what an MP state means for someone looking at a stuck
// guest.
var mpStateText = map[string]string{
	"runnable":      "runnable",
	"halted":        "halted (HLT, waiting for an interrupt)",
	"uninitialized": "waiting for INIT/SIPI",
	"init-received": "waiting for SIPI",
	"sipi-received": "SIPI received",
}

// printVCPUs prints the "vcpus" reply as `govmm info --vcpus` shows it: a
// line on the pause, then one short block per vCPU.
func printVCPUs(w io.Writer, res api.VCPUsResult) {
	if res.WasPaused {
		fmt.Fprintf(w, "%d vCPUs; the VM was paused already and stays paused\n", len(res.VCPUs))
	} else {
		fmt.Fprintf(w, "%d vCPUs; the VM was paused %.3f ms for the capture and runs again\n", len(res.VCPUs), res.PauseMS)
	}
	for _, c := range res.VCPUs {
		printVCPU(w, &c)
	}
	printInterruptLines(w, res)
}

// printInterruptLines prints the IOAPIC's live pins and the PCI
// functions' INTx lines, when the reply has them.
func printInterruptLines(w io.Writer, res api.VCPUsResult) {
	if len(res.IOAPIC) > 0 {
		fmt.Fprintf(w, "IOAPIC pins (unmasked, or with anything asserted or in service):\n")
	}
	for _, p := range res.IOAPIC {
		fmt.Fprintf(w, "  pin %d: vector %#02x dest %d %s%s%s; input %s (line %s, resample %s)%s%s; %d delivered, %d EOIs, %d Remote IRRs cleared by an edge rewrite\n", p.Pin, p.Vector, p.Dest,
			onOff(p.Level, "level", "edge"), onOff(p.Masked, " masked", ""), onOff(p.RemoteIRR, " remote-IRR", ""),
			onOff(p.Asserted, "high", "low"), onOff(p.Line, "high", "low"), onOff(p.Resample, "high", "low"),
			onOff(p.Requested, ", request latched", ""), onOff(p.Resampler, ", resampled", ""), p.Delivered, p.EOIs, p.EdgeClears)
	}
	if len(res.INTx) > 0 {
		fmt.Fprintf(w, "INTx lines:\n")
	}
	for _, x := range res.INTx {
		fmt.Fprintf(w, "  %s: GSI %d, ISR %#x, %s, %s, %d raises\n", x.Device, x.GSI, x.ISR, onOff(x.MSIX, "MSI-X on", "MSI-X off"),
			onOff(x.Asserted, "asserted", "not asserted"), x.Raises)
	}
}

func printVCPU(w io.Writer, c *api.VCPU) {
	mp := mpStateText[c.MPState]
	if mp == "" {
		mp = c.MPState
	}
	mode := fmt.Sprintf("%s mode, %d-bit code", c.Mode, c.CodeBits)
	if c.VM86 {
		mode = "protected mode, virtual-8086"
	}
	fmt.Fprintf(w, "vCPU %d: %s; %s, CPL %d\n", c.Index, mp, mode, c.CPL)
	fmt.Fprintf(w, "  rip %#x  cs %#04x  rsp %#x  ss %#04x\n", c.RIP, c.CS, c.RSP, c.SS)
	fmt.Fprintf(w, "  rflags %#x [%s] IOPL %d; interrupts %s\n", c.RFLAGS.Value, strings.Join(c.RFLAGS.Set, " "), c.RFLAGS.IOPL, onOff(c.RFLAGS.IF, "enabled (IF=1)", "disabled (IF=0)"))
	fmt.Fprintf(w, "  cr0 %#x  cr2 %#x  cr3 %#x  cr4 %#x  efer %#x\n", c.CR0, c.CR2, c.CR3, c.CR4, c.EFER)
	if c.Code != "" {
		fmt.Fprintf(w, "  code %s\n", spacedHex(c.Code))
	} else {
		fmt.Fprintf(w, "  code: unreadable (RIP not mapped)\n")
	}
	fmt.Fprintf(w, "  events: %s\n", eventsText(&c.Events))
	l := &c.LAPIC
	fmt.Fprintf(w, "  lapic: %s, id %d%s, %s (spurious vector %#x); TPR %#02x PPR %#02x\n",
		apicModeText(l.Mode), l.ID, onOff(l.BSP, " (BSP)", ""), onOff(l.SoftwareEnabled, "enabled", "software-disabled"), l.SpuriousVector, l.TPR, l.PPR)
	fmt.Fprintf(w, "    ISR %s  IRR %s  TMR %s\n", vectorList(l.ISR), vectorList(l.IRR), vectorList(l.TMR))
	fmt.Fprintf(w, "    timer: vector %#02x, %s, %s%s; initial %d, current %d, divide by %d%s\n",
		l.Timer.Vector, l.Timer.Mode, onOff(l.Timer.Masked, "masked", "unmasked"), onOff(l.Timer.Pending, ", delivery pending", ""),
		l.InitialCount, l.CurrentCount, l.Divide, deadlineText(l))
}

func onOff(b bool, yes, no string) string {
	if b {
		return yes
	}
	return no
}

func apicModeText(m string) string {
	switch m {
	case "xapic":
		return "xAPIC"
	case "x2apic":
		return "x2APIC"
	}
	return m
}

// spacedHex puts a space between the bytes of a hex string.
func spacedHex(h string) string {
	var b strings.Builder
	for i := 0; i+1 < len(h); i += 2 {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(h[i : i+2])
	}
	return b.String()
}

// vectorList shows vectors as [0x20 0xec], or [] for none.
func vectorList(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprintf("%#02x", x)
	}
	return "[" + strings.Join(s, " ") + "]"
}

func eventsText(e *api.Events) string {
	var parts []string
	if x := e.Exception; x != nil {
		s := fmt.Sprintf("exception %s (%d) %s", x.Name, x.Vector, x.State)
		if x.ErrorCode != nil {
			s += fmt.Sprintf(", error code %#x", *x.ErrorCode)
		}
		if x.Payload != nil {
			s += fmt.Sprintf(", payload %#x", *x.Payload)
		}
		parts = append(parts, s)
	}
	if i := e.Interrupt; i != nil {
		parts = append(parts, fmt.Sprintf("%sinterrupt %#02x injected", onOff(i.Soft, "software ", ""), i.Vector))
	}
	if e.NMI != "" {
		parts = append(parts, "NMI "+e.NMI)
	}
	if e.NMIMasked {
		parts = append(parts, "NMIs blocked")
	}
	if e.Shadow != "" {
		parts = append(parts, "interrupt shadow ("+e.Shadow+")")
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "; ")
}

// deadlineText shows the TSC deadline against the TSC at the capture,
// when the timer is in TSC-deadline mode and both are known.
func deadlineText(l *api.LAPIC) string {
	if l.Timer.Mode != "tsc-deadline" || l.TSCDeadline == nil {
		return ""
	}
	d := *l.TSCDeadline
	switch {
	case d == 0:
		return "; TSC deadline 0 (disarmed)"
	case l.TSC == nil:
		return fmt.Sprintf("; TSC deadline %#x", d)
	case d >= *l.TSC:
		return fmt.Sprintf("; TSC deadline %#x, %d cycles ahead", d, d-*l.TSC)
	}
	return fmt.Sprintf("; TSC deadline %#x, passed %d cycles ago", d, *l.TSC-d)
}

// printReply prints v as indented JSON when asJSON is set, else calls text.
func printReply(w io.Writer, asJSON bool, v any, text func()) error {
	if !asJSON {
		text()
		return nil
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode the reply: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}
