package console

import "sort"

// maxChunk is the most entries one chunk of a revList holds. Chunks keep
// inserts and removals to a short copy while a lookup stays a binary
// search over chunks, then within one.
const maxChunk = 512

// revList is a set of index entries ordered by their revision (the orders
// bucket's sequence of their last change), ascending. It is a list of
// sorted chunks: finding a revision is O(log n), visiting the k entries
// before it newest first is O(k), and inserting or removing one copies at
// most maxChunk entries (plus, when a chunk splits, merges or empties, the
// chunk list, n/maxChunk slice headers). A change always carries a
// revision above every other, so inserts land at the end, where appending
// costs O(1).
//
// An entry must be removed with the revision it was inserted with: the
// caller removes it, changes its revision, and inserts it again.
type revList struct {
	chunks [][]*entry
	n      int
}

// Len is the number of entries.
func (l *revList) Len() int { return l.n }

// chunkFor returns the index of the first chunk whose last revision is at
// least rev (len(chunks) when there is none).
func (l *revList) chunkFor(rev uint64) int {
	return sort.Search(len(l.chunks), func(i int) bool {
		c := l.chunks[i]
		return c[len(c)-1].rev >= rev
	})
}

// insert adds e at the place of e.rev. Revisions are unique, so an equal
// one is never present.
func (l *revList) insert(e *entry) {
	l.n++
	last := len(l.chunks) - 1
	if last < 0 || l.chunks[last][len(l.chunks[last])-1].rev < e.rev {
		// The common case: a change newer than everything.
		if last >= 0 && len(l.chunks[last]) < maxChunk {
			l.chunks[last] = append(l.chunks[last], e)
			return
		}
		c := make([]*entry, 1, maxChunk)
		c[0] = e
		l.chunks = append(l.chunks, c)
		return
	}
	i := l.chunkFor(e.rev)
	c := l.chunks[i]
	j := sort.Search(len(c), func(k int) bool { return c[k].rev >= e.rev })
	if len(c) == maxChunk {
		// Split the full chunk in halves, each with room to grow; the
		// upper half is a fresh array so that the halves never share one.
		upper := make([]*entry, maxChunk/2, maxChunk)
		copy(upper, c[maxChunk/2:])
		clear(c[maxChunk/2:])
		c = c[:maxChunk/2]
		l.chunks = append(l.chunks, nil)
		copy(l.chunks[i+2:], l.chunks[i+1:])
		l.chunks[i], l.chunks[i+1] = c, upper
		if j > len(c) {
			i, j, c = i+1, j-len(c), upper
		}
	}
	c = append(c, nil)
	copy(c[j+1:], c[j:])
	c[j] = e
	l.chunks[i] = c
}

// remove deletes the entry with e's revision and reports whether it was
// there.
func (l *revList) remove(e *entry) bool {
	i := l.chunkFor(e.rev)
	if i == len(l.chunks) {
		return false
	}
	c := l.chunks[i]
	j := sort.Search(len(c), func(k int) bool { return c[k].rev >= e.rev })
	if j == len(c) || c[j] != e {
		return false
	}
	l.n--
	copy(c[j:], c[j+1:])
	c[len(c)-1] = nil
	c = c[:len(c)-1]
	l.chunks[i] = c
	switch {
	case len(c) == 0:
		l.dropChunk(i)
	case len(c) < maxChunk/4 && i+1 < len(l.chunks) && len(c)+len(l.chunks[i+1]) <= maxChunk/2:
		// Merge a sparse chunk into its successor's room, so chunks stay
		// at least a quarter full on average and the chunk list short.
		l.chunks[i] = append(c, l.chunks[i+1]...)
		l.dropChunk(i + 1)
	}
	return true
}

func (l *revList) dropChunk(i int) {
	copy(l.chunks[i:], l.chunks[i+1:])
	l.chunks[len(l.chunks)-1] = nil
	l.chunks = l.chunks[:len(l.chunks)-1]
}

// descend calls fn for the entries with a revision below before (every
// entry when before is 0), newest first, until fn returns false.
func (l *revList) descend(before uint64, fn func(*entry) bool) {
	// (i, j) is the newest entry below before; j == -1 starts at the end
	// of the chunk before i.
	i, j := len(l.chunks)-1, -1
	if i >= 0 {
		j = len(l.chunks[i]) - 1
	}
	if before != 0 {
		if k := l.chunkFor(before); k < len(l.chunks) {
			c := l.chunks[k]
			i, j = k, sort.Search(len(c), func(x int) bool { return c[x].rev >= before })-1
		}
	}
	for ; i >= 0; i-- {
		c := l.chunks[i]
		for ; j >= 0; j-- {
			if !fn(c[j]) {
				return
			}
		}
		if i > 0 {
			j = len(l.chunks[i-1]) - 1
		}
	}
}
