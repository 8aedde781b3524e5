package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/auditlog/auditlog/outbox"
)

// queryWindow is the time window of the windowed query shapes.
const queryWindow = 7 * 24 * time.Hour

// queryPageSize is the page size of every query.
const queryPageSize = 100

// queryShapes are the filter combinations asked: every filter alone and
// with a time window, the window alone and no filter at all.
var queryShapes = []string{
	"none", "window",
	"actor_email", "actor_email_window",
	"actor_id", "actor_id_window",
	"action", "action_window",
	"action_prefix", "action_prefix_window",
	"resource_type", "resource_type_window",
	"source", "source_window",
}

// querySpec is one planned request.
type querySpec struct {
	shape string
	ws    string
	query url.Values // filters and limit, without the cursor
	// page is the page the timed request asks for; cursor leads to it.
	page   int
	cursor string
}

func (q *querySpec) path() string {
	v := url.Values{}
	for k, vs := range q.query {
		v[k] = vs
	}
	if q.cursor != "" {
		v.Set("cursor", q.cursor)
	}
	return "/v1/events?" + v.Encode()
}

// queryStage runs --queries random filtered queries through GET /v1/events
// (HTTP, the in-process server) over the bulk-loaded data set, half of them
// asking for page --deep-page (reached by following next_cursor before the
// clock starts), then shows each shape's plan.
func (b *bench) queryStage(ctx context.Context) error {
	if err := b.ensureDataset(ctx, dataset{
		name: "query", rows: b.cfg.queryEvents, seed: b.cfg.seed + 2,
		pick: func(g *generator) string { return g.workspace() },
	}); err != nil {
		return err
	}
	srv, err := b.server()
	if err != nil {
		return err
	}
	rs := runs{}
	var lastSpecs []*querySpec
	for run := range b.cfg.runs {
		specs, err := b.planQueries(ctx, srv, uint64(run))
		if err != nil {
			return err
		}
		lastSpecs = specs
		var all, first, deep []time.Duration
		byShape := map[string][]time.Duration{}
		deepPages := 0
		for _, q := range specs {
			d, err := timeQuery(ctx, b, srv, q)
			if err != nil {
				return err
			}
			all = append(all, d)
			byShape[q.shape] = append(byShape[q.shape], d)
			if q.page > 1 {
				deep = append(deep, d)
				deepPages += q.page
			} else {
				first = append(first, d)
			}
		}
		for _, p := range []struct {
			name string
			ds   []time.Duration
		}{{"", all}, {"first_", first}, {"deep_", deep}} {
			rs.add(p.name+"p50", ms(percentile(p.ds, 0.50)))
			rs.add(p.name+"p95", ms(percentile(p.ds, 0.95)))
			rs.add(p.name+"p99", ms(percentile(p.ds, 0.99)))
		}
		rs.add("max", ms(percentile(all, 1)))
		rs.add("deep_count", float64(len(deep)))
		rs.add("deep_avg_page", ratio(float64(deepPages), float64(len(deep))))
		for shape, ds := range byShape {
			rs.add("shape."+shape+".p95", ms(percentile(ds, 0.95)))
		}
		b.progress("query run %d/%d: p50 %.2f ms, p95 %.2f ms, p99 %.2f ms", run+1, b.cfg.runs,
			ms(percentile(all, 0.5)), ms(percentile(all, 0.95)), ms(percentile(all, 0.99)))
	}

	o := b.out
	o.num("query.events", float64(b.cfg.queryEvents), 0)
	o.num("query.queries", float64(b.cfg.queries), 0)
	o.num("query.page_size", queryPageSize, 0)
	o.text("query.via", "http")
	for _, k := range []string{"p50", "p95", "p99", "max", "first_p50", "first_p95", "first_p99", "deep_p50", "deep_p95", "deep_p99"} {
		o.num("query."+k+"_ms", rs.median(k), 2)
	}
	o.num("query.deep_count", rs.median("deep_count"), 0)
	o.num("query.deep_avg_page", rs.median("deep_avg_page"), 1)
	for _, shape := range queryShapes {
		if _, ok := rs["shape."+shape+".p95"]; ok {
			o.num("query.shape."+shape+".p95_ms", rs.median("shape."+shape+".p95"), 2)
		}
	}
	p95, p99 := rs.median("p95"), rs.median("p99")
	firstP95, deepP95 := rs.median("first_p95"), rs.median("deep_p95")
	o.num("query.deep_vs_first_p95", ratio(deepP95, firstP95), 3)
	o.target("query_p95", p95 <= 10)
	o.target("query_p99", p99 <= 25)
	o.target("query_deep_vs_first", rs.median("deep_count") == 0 || deepP95 <= 1.25*firstP95)

	seqScans, err := b.explainShapes(ctx, lastSpecs)
	if err != nil {
		return err
	}
	o.target("query_index_scans", seqScans == 0)

	// Index use counters are flushed by each backend at most once a
	// second; give the server's idle backends time to report.
	time.Sleep(1500 * time.Millisecond)
	rows, err := b.pool.Query(ctx, indexScansSQL)
	if err != nil {
		return fmt.Errorf("reading index scan counts: %w", err)
	}
	scans, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (indexSize, error) {
		var i indexSize
		err := r.Scan(&i.name, &i.bytes)
		return i, err
	})
	if err != nil {
		return fmt.Errorf("reading index scan counts: %w", err)
	}
	for _, s := range scans {
		o.num("query.index_scans."+strings.TrimPrefix(s.name, "audit_events_"), float64(s.bytes), 0)
	}
	st, err := b.storage(ctx)
	if err != nil {
		return err
	}
	st.print(o, "query.storage")
	return nil
}

// planQueries draws the run's queries and, for the deep ones, walks to
// their page. The filter values are drawn from the generator's own
// distributions, so popular values are asked more often, as in use.
func (b *bench) planQueries(ctx context.Context, srv *server, run uint64) ([]*querySpec, error) {
	rng := rand.New(rand.NewPCG(b.cfg.seed, 0x7175657279+run))
	g := newGenerator(b.cfg.seed+1000+run, b.workspaces)
	specs := make([]*querySpec, 0, b.cfg.queries)
	for range b.cfg.queries {
		q := b.drawQuery(rng, g, queryShapes[rng.IntN(len(queryShapes))])
		q.page = 1
		if rng.IntN(2) == 1 {
			if err := b.walk(ctx, srv, q, b.cfg.deepPage); err != nil {
				return nil, err
			}
		}
		specs = append(specs, q)
	}
	rng.Shuffle(len(specs), func(i, j int) { specs[i], specs[j] = specs[j], specs[i] })
	return specs, nil
}

// drawQuery makes a query of shape over a random workspace.
func (b *bench) drawQuery(rng *rand.Rand, g *generator, shape string) *querySpec {
	ws := b.workspaces[rng.IntN(len(b.workspaces))]
	q := &querySpec{shape: shape, ws: ws, query: url.Values{}}
	q.query.Set("limit", strconv.Itoa(queryPageSize))
	filter, windowed := strings.CutSuffix(shape, "_window")
	if shape == "window" {
		filter, windowed = "", true
	}
	// A sample event of the workspace supplies the filter value; users
	// are the only actors with an email.
	var e genEvent
	for range 100 {
		e = g.next(ws, b.now)
		if e.actorEmail != "" {
			break
		}
	}
	switch filter {
	case "actor_email":
		q.query.Set("actor_email", e.actorEmail)
	case "actor_id":
		q.query.Set("actor_id", e.actorID)
	case "action":
		q.query.Set("action", e.action)
	case "action_prefix":
		word, _, _ := strings.Cut(e.action, ".")
		q.query.Set("action", word+".*")
	case "resource_type":
		q.query.Set("resource_type", e.resourceType)
	case "source":
		q.query.Set("source", e.source)
	}
	if windowed {
		oldest := b.now.Add(-datasetSpan)
		from := oldest.Add(time.Duration(rng.Int64N(int64(datasetSpan - queryWindow)))).Truncate(time.Millisecond)
		q.query.Set("from", outbox.FormatTime(from))
		q.query.Set("to", outbox.FormatTime(from.Add(queryWindow)))
	}
	return q
}

// pageAnswer is the part of a GET /v1/events answer the bench reads.
type pageAnswer struct {
	Data       []json.RawMessage `json:"data"`
	NextCursor *string           `json:"next_cursor"`
}

// walk follows next_cursor from q's first page towards page, stopping at
// the last page there is, and leaves q asking for the page reached.
func (b *bench) walk(ctx context.Context, srv *server, q *querySpec, page int) error {
	for q.page < page {
		ans, err := fetchPage(ctx, b, srv, q)
		if err != nil {
			return err
		}
		if ans.NextCursor == nil {
			return nil
		}
		q.cursor = *ans.NextCursor
		q.page++
	}
	return nil
}

func fetchPage(ctx context.Context, b *bench, srv *server, q *querySpec) (pageAnswer, error) {
	var ans pageAnswer
	resp, err := srv.get(ctx, b.pool, q.ws, q.path())
	if err != nil {
		return ans, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil {
		return ans, fmt.Errorf("decoding GET %s: %w", q.path(), err)
	}
	return ans, nil
}

// timeQuery sends q and reads the whole answer; the time is from sending
// to the last byte. The answer is checked after the clock stops.
func timeQuery(ctx context.Context, b *bench, srv *server, q *querySpec) (time.Duration, error) {
	start := time.Now()
	resp, err := srv.get(ctx, b.pool, q.ws, q.path())
	if err != nil {
		return 0, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("reading GET %s: %w", q.path(), err)
	}
	var ans pageAnswer
	if err := json.Unmarshal(body, &ans); err != nil {
		return 0, fmt.Errorf("decoding GET %s: %w", q.path(), err)
	}
	if len(ans.Data) > queryPageSize {
		return 0, fmt.Errorf("GET %s returned %d events, more than the limit", q.path(), len(ans.Data))
	}
	return d, nil
}

var (
	sortNodeRe = regexp.MustCompile(`(?m)^\s*(->\s+)?(Incremental\s+)?Sort\s+\(`)
	buffersRe  = regexp.MustCompile(`Buffers: shared((?: \w+=\d+)+)`)
	durationRe = regexp.MustCompile(`duration: ([0-9.]+) ms`)
)

// planSummary is what the bench reads from one plan.
type planSummary struct {
	seq, sort, bitmap bool
	buffers           int64
	ms                float64
}

func summarisePlan(plan string) planSummary {
	s := planSummary{
		seq:    hasRealSeqScan(plan),
		sort:   sortNodeRe.MatchString(plan),
		bitmap: strings.Contains(plan, "Bitmap Heap Scan"),
	}
	// The first Buffers line is the top node's: the whole query's.
	if m := buffersRe.FindStringSubmatch(plan); m != nil {
		for _, kv := range strings.Fields(m[1]) {
			_, v, _ := strings.Cut(kv, "=")
			if n, err := strconv.ParseInt(v, 10, 64); err == nil && !strings.HasPrefix(kv, "dirtied") && !strings.HasPrefix(kv, "written") {
				s.buffers += n
			}
		}
	}
	if m := durationRe.FindStringSubmatch(plan); m != nil {
		s.ms, _ = strconv.ParseFloat(m[1], 64)
	}
	return s
}

// hasRealSeqScan reports whether plan has a Seq Scan that read something.
// The planner scans empty partitions (those of the retention window not
// yet filled) sequentially at no cost; such a node shows neither buffers
// nor rows removed, and is not counted.
func hasRealSeqScan(plan string) bool {
	lines := strings.Split(plan, "\n")
	indent := func(l string) int { return len(l) - len(strings.TrimLeft(l, " ")) }
	for i, l := range lines {
		if !strings.Contains(l, "Seq Scan on") {
			continue
		}
		for _, d := range lines[i+1:] {
			if indent(d) <= indent(l) {
				break
			}
			if strings.Contains(d, "Buffers:") || strings.Contains(d, "Rows Removed by Filter") {
				return true
			}
		}
	}
	return false
}

// explainShapes sends one first-page and one deep-page query of every
// shape through the auto_explain server and reports what the plans show:
// sequential scans, sorts (rows not read in index order), bitmap scans,
// and the buffers each page touched. It returns the number of plans with a
// sequential scan.
func (b *bench) explainShapes(ctx context.Context, specs []*querySpec) (int, error) {
	es, err := b.newExplainServer(ctx)
	if err != nil {
		return 0, err
	}
	defer es.close()
	var plansOut *os.File
	if b.cfg.plansFile != "" {
		if plansOut, err = os.Create(b.cfg.plansFile); err != nil {
			return 0, fmt.Errorf("creating %s: %w", b.cfg.plansFile, err)
		}
		defer plansOut.Close()
	}
	// One representative of each shape: the deepest query of the shape
	// in the last run, so deep pages exist.
	rep := map[string]*querySpec{}
	for _, q := range specs {
		if r, ok := rep[q.shape]; !ok || q.page > r.page {
			rep[q.shape] = q
		}
	}
	var withSeq, withSort, withBitmap []string
	count := 0
	for _, shape := range queryShapes {
		r, ok := rep[shape]
		if !ok {
			continue
		}
		for _, deep := range []bool{false, true} {
			q := &querySpec{shape: r.shape, ws: r.ws, query: r.query, page: 1}
			if deep {
				if r.page < 2 {
					continue
				}
				if err := b.walk(ctx, es.server, q, r.page); err != nil {
					return 0, err
				}
			}
			label := shape + ".first"
			if deep {
				label = shape + ".deep"
			}
			es.plans.take()
			if _, err := fetchPage(ctx, b, es.server, q); err != nil {
				return 0, err
			}
			var sum planSummary
			for _, plan := range es.plans.take() {
				if !strings.Contains(plan, "audit_events") {
					continue // the key look-up and the cursor key
				}
				count++
				s := summarisePlan(plan)
				sum.seq = sum.seq || s.seq
				sum.sort = sum.sort || s.sort
				sum.bitmap = sum.bitmap || s.bitmap
				sum.buffers += s.buffers
				sum.ms += s.ms
				if plansOut != nil {
					fmt.Fprintf(plansOut, "== %s (page %d) GET %s\n%s\n\n", label, q.page, q.path(), plan)
				}
			}
			if sum.seq {
				withSeq = append(withSeq, label)
			}
			if sum.sort {
				withSort = append(withSort, label)
			}
			if sum.bitmap {
				withBitmap = append(withBitmap, label)
			}
			b.out.num("query.plan."+label+".buffers", float64(sum.buffers), 0)
			b.out.num("query.plan."+label+".ms", sum.ms, 2)
		}
	}
	list := func(l []string) string {
		if len(l) == 0 {
			return "none"
		}
		return strings.Join(l, ",")
	}
	b.out.num("query.plans", float64(count), 0)
	b.out.text("query.plans_with_seq_scan", list(withSeq))
	b.out.text("query.plans_with_sort", list(withSort))
	b.out.text("query.plans_with_bitmap_scan", list(withBitmap))
	return len(withSeq), nil
}
