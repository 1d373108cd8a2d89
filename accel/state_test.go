package accel

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestLAPICJSON(t *testing.T) {
	var l LAPIC
	for i := range l.Regs {
		l.Regs[i] = byte(i * 31)
	}
	b, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 1500 || !strings.HasPrefix(string(b), `"`) {
		t.Fatalf("LAPIC JSON is not one compact string: %d bytes", len(b))
	}
	var got LAPIC
	if err := json.Unmarshal(b, &got); err != nil || got != l {
		t.Fatalf("round trip: %v", err)
	}
	if err := json.Unmarshal([]byte(`"AAAA"`), &got); err == nil {
		t.Fatal("a short LAPIC page was accepted")
	}
}
