package identity

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// NodeIdentity returns the client ID of the node's own (kubelet's)
// user-assigned identity from the cloud provider config that AKS and
// aks-engine write on every node (azure.json's userAssignedIdentityID);
// "" when there is no such file or it names none. Every component protects
// it: no pod may get its token by naming it in an AzureIdentity.
func NodeIdentity(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading cloud config: %w", err)
	}
	var cfg struct {
		UserAssignedIdentityID string `json:"userAssignedIdentityID"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return "", fmt.Errorf("parsing cloud config %s: %w", path, err)
	}
	return strings.TrimSpace(cfg.UserAssignedIdentityID), nil
}
