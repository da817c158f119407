package llmsim_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/llmsim"
)

// Example starts a simulator and asks it for two typed fields; the marker
// comes back inside the string field.
func Example() {
	srv, baseURL, stop, err := llmsim.Start(llmsim.Config{Keys: []string{"k"}}, zerolog.Nop())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()

	body := `{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": ` +
		`"Rate row 17 [[mark:r17.q3]]. Respond with a JSON object with these fields: {\"score\": \"integer\", \"rationale\": \"string\"}"}]}`
	req, _ := http.NewRequest(http.MethodPost, baseURL+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer k")
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()

	var out struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(resp.StatusCode, out.Choices[0].Message.Content)
	fmt.Println("ok answers:", srv.Stats().OK)
	// Output:
	// 200 {"score":1,"rationale":"rationale: r17.q3 raven ember"}
	// ok answers: 1
}
