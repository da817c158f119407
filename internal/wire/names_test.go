package wire

import (
	"errors"
	"strings"
	"testing"
)

// every lists each name a Names derives, by what it is, for one deployment.
func every(n Names) map[string]string {
	return map[string]string{
		"stream input":       n.StreamInput(),
		"stream jobs":        n.StreamJobs(),
		"stream results":     n.StreamResults(),
		"stream rows":        n.StreamRows(),
		"stream audit":       n.StreamAudit(),
		"stream dead":        n.StreamDead(),
		"stream submit":      n.StreamSubmit(),
		"stream advisories":  n.StreamAdvisories(),
		"bucket retry":       n.BucketRetry(),
		"bucket runs":        n.BucketRuns(),
		"bucket fleet":       n.BucketFleet(),
		"bucket throttle":    n.BucketThrottle(),
		"bucket lease":       n.BucketLease(),
		"object store":       n.BucketResults(),
		"input subjects":     n.InputSubjects(),
		"job subjects":       n.JobSubjects(),
		"result subjects":    n.ResultSubjects(),
		"row subjects":       n.RowSubjects(),
		"audit subjects":     n.AuditSubjects(),
		"dead subjects":      n.DeadSubjects(),
		"submit subjects":    n.SubmitSubjects(),
		"advisories":         n.MaxDeliveriesAdvisories(),
		"throttle subjects":  n.ThrottleSubjects(),
		"input open":         n.InputOpenSubject("r1"),
		"input seal":         n.InputSealSubject("r1"),
		"input row":          n.InputRowSubject("r1", 7),
		"job":                n.JobSubject("dep", "r1", 7, "q"),
		"job filter":         n.JobFilter("dep"),
		"result":             n.ResultSubject("r1", 7, "q"),
		"row":                n.RowSubject("r1", 7),
		"audit":              n.AuditSubject("r1"),
		"dead":               n.DeadSubject("dep", "r1"),
		"submit open":        n.SubmitOpenSubject("pipe", "r1"),
		"submit row":         n.SubmitRowSubject("pipe", "r1", 7),
		"submit seal":        n.SubmitSealSubject("pipe", "r1"),
		"throttle signal":    n.ThrottleSignalSubject("dep"),
		"throttle heartbeat": n.ThrottleHeartbeatSubject("dep"),
		"input open filter":  n.InputOpenFilter(),
		"input run filter":   n.InputRunFilter("r1"),
		"result run filter":  n.ResultRunFilter("r1"),
		"job run filter":     n.JobRunFilter("r1"),
		"job dep run filter": n.JobDeploymentRunFilter("dep", "r1"),
		"submit run filter":  n.SubmitRunFilter("r1"),
	}
}

// The default names are the contract of docs/WIRE.md, spelled out here; a prefix "a"
// gives "a_" before every stream and bucket name and "a." before every subject.
func TestNames(t *testing.T) {
	want := map[string][2]string{ // default, prefix "a"
		"stream input":       {"MQ_INPUT", "a_MQ_INPUT"},
		"stream jobs":        {"MQ_JOBS", "a_MQ_JOBS"},
		"stream results":     {"MQ_RESULTS", "a_MQ_RESULTS"},
		"stream rows":        {"MQ_ROWS", "a_MQ_ROWS"},
		"stream audit":       {"MQ_AUDIT", "a_MQ_AUDIT"},
		"stream dead":        {"MQ_DEAD", "a_MQ_DEAD"},
		"stream submit":      {"MQ_SUBMIT", "a_MQ_SUBMIT"},
		"stream advisories":  {"MQ_ADVISORIES", "a_MQ_ADVISORIES"},
		"bucket retry":       {"mq_retry", "a_mq_retry"},
		"bucket runs":        {"mq_runs", "a_mq_runs"},
		"bucket fleet":       {"mq_fleet", "a_mq_fleet"},
		"bucket throttle":    {"mq_throttle", "a_mq_throttle"},
		"bucket lease":       {"mq_lease", "a_mq_lease"},
		"object store":       {"mq_results", "a_mq_results"},
		"input subjects":     {"input.>", "a.input.>"},
		"job subjects":       {"jobs.>", "a.jobs.>"},
		"result subjects":    {"results.>", "a.results.>"},
		"row subjects":       {"rows.>", "a.rows.>"},
		"audit subjects":     {"audit.>", "a.audit.>"},
		"dead subjects":      {"dead.>", "a.dead.>"},
		"submit subjects":    {"submit.>", "a.submit.>"},
		"advisories":         {"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.MQ_JOBS.>", "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.a_MQ_JOBS.>"},
		"throttle subjects":  {"mq.throttle.>", "a.mq.throttle.>"},
		"input open":         {"input.r1.open", "a.input.r1.open"},
		"input seal":         {"input.r1.seal", "a.input.r1.seal"},
		"input row":          {"input.r1.7", "a.input.r1.7"},
		"job":                {"jobs.dep.r1.7.q", "a.jobs.dep.r1.7.q"},
		"job filter":         {"jobs.dep.>", "a.jobs.dep.>"},
		"result":             {"results.r1.7.q", "a.results.r1.7.q"},
		"row":                {"rows.r1.7", "a.rows.r1.7"},
		"audit":              {"audit.r1.batch", "a.audit.r1.batch"},
		"dead":               {"dead.dep.r1", "a.dead.dep.r1"},
		"submit open":        {"submit.pipe.r1.open", "a.submit.pipe.r1.open"},
		"submit row":         {"submit.pipe.r1.7", "a.submit.pipe.r1.7"},
		"submit seal":        {"submit.pipe.r1.seal", "a.submit.pipe.r1.seal"},
		"throttle signal":    {"mq.throttle.dep.signal", "a.mq.throttle.dep.signal"},
		"throttle heartbeat": {"mq.throttle.dep.hb", "a.mq.throttle.dep.hb"},
		"input open filter":  {"input.*.open", "a.input.*.open"},
		"input run filter":   {"input.r1.>", "a.input.r1.>"},
		"result run filter":  {"results.r1.>", "a.results.r1.>"},
		"job run filter":     {"jobs.*.r1.>", "a.jobs.*.r1.>"},
		"job dep run filter": {"jobs.dep.r1.>", "a.jobs.dep.r1.>"},
		"submit run filter":  {"submit.*.r1.>", "a.submit.*.r1.>"},
	}
	t.Run("the zero value gives today's names exactly", func(t *testing.T) {
		got := every(Names{})
		if len(got) != len(want) {
			t.Fatalf("%d names, want %d", len(got), len(want))
		}
		for what, w := range want {
			if got[what] != w[0] {
				t.Errorf("%s = %q, want %q", what, got[what], w[0])
			}
		}
		if d := MustNames(""); d != (Names{}) {
			t.Errorf("NewNames(\"\") = %#v, want the zero value", d)
		}
	})
	t.Run("the package's constants and builders are the default names", func(t *testing.T) {
		n := Names{}
		for got, w := range map[string]string{
			StreamInput: n.StreamInput(), StreamJobs: n.StreamJobs(), StreamResults: n.StreamResults(),
			StreamRows: n.StreamRows(), StreamAudit: n.StreamAudit(), StreamDead: n.StreamDead(),
			StreamSubmit: n.StreamSubmit(), StreamAdvisories: n.StreamAdvisories(),
			BucketRetry: n.BucketRetry(), BucketRuns: n.BucketRuns(), BucketFleet: n.BucketFleet(),
			BucketThrottle: n.BucketThrottle(), BucketLease: n.BucketLease(), BucketResults: n.BucketResults(),
			MaxDeliveriesAdvisories:      n.MaxDeliveriesAdvisories(),
			JobSubject("d", "r", 1, "q"): n.JobSubject("d", "r", 1, "q"),
		} {
			if got != w {
				t.Errorf("%q != %q", got, w)
			}
		}
	})
	t.Run("a prefix changes every name", func(t *testing.T) {
		got := every(MustNames("a"))
		for what, w := range want {
			if got[what] != w[1] {
				t.Errorf("%s = %q, want %q", what, got[what], w[1])
			}
		}
	})
	t.Run("two prefixes share no stream, bucket or subject", func(t *testing.T) {
		seen := map[string]string{}
		for _, p := range []string{"", "a", "b", "a_MQ", "A"} {
			n := MustNames(p)
			for _, name := range append(n.Streams(), n.Buckets()...) {
				if other, dup := seen[name]; dup {
					t.Errorf("%q is a name of prefixes %q and %q", name, other, p)
				}
				seen[name] = p
			}
		}
	})
}

func TestNamesParseTheirOwnSubjects(t *testing.T) {
	for _, p := range []string{"", "team-a"} {
		n := MustNames(p)
		t.Run("prefix "+n.String(), func(t *testing.T) {
			dep, a, err := n.ParseJobSubject(n.JobSubject("dep", "r1", 7, "q"))
			if err != nil || dep != "dep" || a != (Addr{Run: "r1", Row: 7, Query: "q"}) {
				t.Errorf("ParseJobSubject = %q %v %v", dep, a, err)
			}
			if a, err := n.ParseResultSubject(n.ResultSubject("r1", 7, "q")); err != nil || a != (Addr{Run: "r1", Row: 7, Query: "q"}) {
				t.Errorf("ParseResultSubject = %v %v", a, err)
			}
			if run, kind, row, err := n.ParseInputSubject(n.InputRowSubject("r1", 7)); err != nil || run != "r1" || kind != InputRow || row != 7 {
				t.Errorf("ParseInputSubject = %q %v %d %v", run, kind, row, err)
			}
			if pl, run, kind, _, err := n.ParseSubmitSubject(n.SubmitSealSubject("pipe", "r1")); err != nil || pl != "pipe" || run != "r1" || kind != InputSeal {
				t.Errorf("ParseSubmitSubject = %q %q %v %v", pl, run, kind, err)
			}
			for subj, kind := range map[string]string{n.JobSubject("d", "r", 1, "q"): "jobs", n.InputOpenSubject("r"): "input", n.ResultSubject("r", 1, "q"): "results"} {
				if got := n.Kind(subj); got != kind {
					t.Errorf("Kind(%s) = %q, want %q", subj, got, kind)
				}
			}
		})
	}
	t.Run("a subject of another prefix is refused", func(t *testing.T) {
		a, b := MustNames("a"), MustNames("b")
		if _, _, err := a.ParseJobSubject(b.JobSubject("dep", "r1", 7, "q")); !errors.Is(err, ErrOtherPrefix) {
			t.Errorf("a parsing b's job subject: err = %v, want ErrOtherPrefix", err)
		}
		if _, err := a.ParseResultSubject(ResultSubject("r1", 7, "q")); !errors.Is(err, ErrOtherPrefix) {
			t.Errorf("a parsing a default result subject: err = %v, want ErrOtherPrefix", err)
		}
		if _, _, _, err := (Names{}).ParseInputSubject(a.InputOpenSubject("r1")); err == nil {
			t.Errorf("the default names parsed a's input subject")
		}
	})
}

func TestValidatePrefix(t *testing.T) {
	for _, ok := range []string{"", "a", "team-a", "Team_2", "0prod", strings.Repeat("x", MaxPrefixLen)} {
		if _, err := NewNames(ok); err != nil {
			t.Errorf("NewNames(%q) = %v, want it accepted", ok, err)
		}
	}
	for bad, says := range map[string]string{
		"a.b":                               "no '.'",
		"a*":                                "no '.', '*'",
		">":                                 "letters, digits",
		"a b":                               "spaces",
		"$SYS":                              "starting with a letter or a digit",
		"_INBOX":                            "starting with a letter or a digit",
		"-x":                                "starting with a letter or a digit",
		strings.Repeat("x", MaxPrefixLen+1): "longer than 32",
		"jobs":                              "reserved",
		"mq":                                "reserved",
		"input":                             "reserved",
	} {
		_, err := NewNames(bad)
		if err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("NewNames(%q) = %v, want an error saying %q", bad, err, says)
		}
	}
}
