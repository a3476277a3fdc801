package peer

// IperfResult is the part of `iperf3 -J`'s output the tests and the bench
// read: the receiver's totals, or iperf3's error.
type IperfResult struct {
	Error string `json:"error"`
	End   struct {
		SumReceived struct {
			Bytes   int64   `json:"bytes"`
			Seconds float64 `json:"seconds"`
			BPS     float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
}
