//go:build !race

package console

// raceEnabled reports a build with the race detector, which multiplies
// the memory and time of every access.
const raceEnabled = false
