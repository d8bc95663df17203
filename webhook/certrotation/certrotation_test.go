package certrotation

import "testing"

func TestAddRejectsMissingNames(t *testing.T) {
	if err := Add(nil, Config{}); err == nil {
		t.Fatal("AddCertRotation with no names succeeded")
	}
}
