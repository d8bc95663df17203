package fakeazure

import (
	"net/http"
	"slices"
	"strings"
	"time"
)

// Test knobs: fault injection, write latency and what the fake saw.

// Fault is an error response the fake returns instead of serving a request.
type Fault struct {
	// Method is the HTTP method it applies to (GET or PATCH).
	Method string
	// Pool limits the fault to one pool's ARM ID; "" matches every pool.
	Pool string
	// Status is the HTTP status (429, 500, ...).
	Status int
	// RetryAfter is sent as the Retry-After header when set (seconds or an
	// HTTP date).
	RetryAfter string
}

// Write is one PATCH the fake received, for assertions.
type Write struct {
	Pool   string
	At     time.Time
	Status int
	// Body is the request's identity.userAssignedIdentities: resource ID to
	// true (add, `{}`) or false (remove, `null`).
	Body map[string]bool
	Type string
}

// SetWriteLatency sets how long each PATCH runs before it takes effect.
func (a *ARM) SetWriteLatency(d time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.writeLatency = d
}

// InjectFault makes the next matching request fail once.
func (a *ARM) InjectFault(f Fault) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.faults = append(a.faults, f)
}

// Busy simulates another client's write on the pool for d: writes meanwhile
// get 409, as ARM answers while an operation is in progress.
func (a *ARM) Busy(poolID string, d time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.busy[key(poolID)] = time.Now().Add(d)
}

// Calls returns the number of requests by kind: "GET <kind>", "PATCH <kind>",
// "GET operation".
func (a *ARM) Calls() map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]int, len(a.calls))
	for k, v := range a.calls {
		out[k] = v
	}
	return out
}

// Writes returns the PATCH requests received, in order.
func (a *ARM) Writes() []Write {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.writes)
}

func (a *ARM) count(kind string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls[kind]++
}

// takeFault removes and returns the first fault matching the request.
func (a *ARM) takeFault(method, poolID string) (Fault, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, f := range a.faults {
		if f.Method == method && (f.Pool == "" || strings.EqualFold(f.Pool, poolID)) {
			a.faults = slices.Delete(a.faults, i, i+1)
			return f, true
		}
	}
	return Fault{}, false
}

func (a *ARM) recordWrite(method string, wr Write) {
	if method != http.MethodPatch {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	wr.At = time.Now()
	a.writes = append(a.writes, wr)
}
