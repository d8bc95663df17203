package v1

// Client and resource IDs (Azure AD GUIDs, ARM IDs) compare ignoring ASCII
// case only. Unicode case folding would make look-alikes equal (ſ, U+017F,
// folds to s; K, U+212A, to k): a name one check lower-cases and another
// folds then passes the first as a different identity and matches in the
// second. So every comparison of IDs goes through SameID or IDKey, and a
// non-ASCII byte equals only itself.

// SameID reports whether a and b are the same client or resource ID: equal
// but for the case of ASCII letters.
func SameID(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range len(a) {
		if lowerASCII(a[i]) != lowerASCII(b[i]) {
			return false
		}
	}
	return true
}

// IDKey is id with its ASCII letters lower-cased: the key under which IDs
// that are SameID meet in a map or an index.
func IDKey(id string) string {
	b := []byte(id)
	for i, c := range b {
		b[i] = lowerASCII(c)
	}
	return string(b)
}

// IsASCII reports whether id holds ASCII only, as every real client and
// resource ID does.
func IsASCII(id string) bool {
	for i := range len(id) {
		if id[i] >= 0x80 {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
