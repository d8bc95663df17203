package fakeazure

// DeleteIdentity removes a user-assigned identity (`az identity delete`). It
// stays on pools that still list it, as in Azure, where a deleted identity
// lingers on VMs until removed from them.
func (s *State) DeleteIdentity(resourceID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.identities[key(resourceID)]
	delete(s.identities, key(resourceID))
	return ok
}
