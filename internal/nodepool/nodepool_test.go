package nodepool

import "testing"

func TestFromProviderID(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{in: "azure:///subscriptions/s/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachineScaleSets/aks-pool1/virtualMachines/3", want: "/subscriptions/s/resourceGroups/MC_rg/providers/Microsoft.Compute/virtualMachineScaleSets/aks-pool1"},
		{in: "azure:///subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachines/vm1", want: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"},
		{in: "aws:///us-east-1a/i-123", wantErr: true},
		{in: "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/lb", wantErr: true},
		{in: "azure:///subscriptions//resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tc := range tests {
		got, err := FromProviderID(tc.in)
		if (err != nil) != tc.wantErr || (err == nil && got.ID() != tc.want) {
			t.Errorf("FromProviderID(%q) = %q, %v; want %q, err %v", tc.in, got.ID(), err, tc.want, tc.wantErr)
		}
	}
}
