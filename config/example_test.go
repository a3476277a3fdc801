package config

import "testing"

// The documented example must stay loadable: it is what operators copy.
func TestExampleConfigLoads(t *testing.T) {
	c, err := Load("../examples/netward.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Metrics.Listen != "127.0.0.1:9740" || c.Limits.InspectTimeout.String() != "3s" {
		t.Errorf("example not read as documented: %+v", c)
	}
}
