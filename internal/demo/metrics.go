package demo

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// sample is one series of a Prometheus text exposition.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// metrics is a parsed Prometheus text exposition (format 0.0.4), as the
// processes' /metrics listeners serve it.
type metrics []sample

// parseMetrics reads a text exposition. Comments and blank lines are
// skipped; a timestamp after the value is ignored. A line that is not a
// sample is an error naming its number, so that a listener answering
// something else (an HTML error page) is not read as zeros.
func parseMetrics(r io.Reader) (metrics, error) {
	var m metrics
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		s, err := parseSample(line)
		if err != nil {
			return nil, fmt.Errorf("metrics line %d: %w", n, err)
		}
		m = append(m, s)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read metrics: %w", err)
	}
	return m, nil
}

// parseSample parses `name{label="value",...} value [timestamp]`.
func parseSample(line string) (sample, error) {
	s := sample{labels: map[string]string{}}
	end := strings.IndexAny(line, "{ \t")
	if end <= 0 {
		return s, fmt.Errorf("no value in %q", line)
	}
	s.name, line = line[:end], line[end:]
	if line[0] == '{' {
		rest, err := parseLabels(line[1:], s.labels)
		if err != nil {
			return s, fmt.Errorf("%s: %w", s.name, err)
		}
		line = rest
	}
	fields := strings.Fields(line)
	if len(fields) < 1 || len(fields) > 2 {
		return s, fmt.Errorf("%s: want a value and an optional timestamp, got %q", s.name, line)
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return s, fmt.Errorf("%s: value: %w", s.name, err)
	}
	s.value = v
	return s, nil
}

// parseLabels reads `k="v",...}` into into and returns what follows the
// closing brace. Values may hold escaped quotes, backslashes and newlines.
func parseLabels(in string, into map[string]string) (string, error) {
	for {
		in = strings.TrimLeft(in, " ,")
		if strings.HasPrefix(in, "}") {
			return in[1:], nil
		}
		eq := strings.IndexByte(in, '=')
		if eq <= 0 || len(in) < eq+2 || in[eq+1] != '"' {
			return "", fmt.Errorf("malformed labels at %q", in)
		}
		key := strings.TrimSpace(in[:eq])
		in = in[eq+2:]
		var val strings.Builder
		closed := false
		for i := 0; i < len(in); i++ {
			c := in[i]
			if c == '\\' && i+1 < len(in) {
				i++
				switch in[i] {
				case 'n':
					val.WriteByte('\n')
				default:
					val.WriteByte(in[i])
				}
				continue
			}
			if c == '"' {
				in, closed = in[i+1:], true
				break
			}
			val.WriteByte(c)
		}
		if !closed {
			return "", fmt.Errorf("unterminated value of label %s", key)
		}
		into[key] = val.String()
	}
}

// sum adds the values of the series named name whose labels include every
// pair of want (alternating label names and values); with no pairs, every
// series of that name. A metric absent from the exposition sums to 0.
func (m metrics) sum(name string, want ...string) float64 {
	total := 0.0
	for _, s := range m {
		if s.name == name && s.has(want) {
			total += s.value
		}
	}
	return total
}

func (s sample) has(pairs []string) bool {
	for i := 0; i+1 < len(pairs); i += 2 {
		if v, ok := s.labels[pairs[i]]; !ok || v != pairs[i+1] {
			return false
		}
	}
	return true
}

// Metric reads a text exposition from r and sums the series named name
// whose labels include every pair of want (see metrics.sum): one figure
// of a process's /metrics, for the benchmark runner.
func Metric(r io.Reader, name string, want ...string) (float64, error) {
	m, err := parseMetrics(r)
	if err != nil {
		return 0, err
	}
	return m.sum(name, want...), nil
}
