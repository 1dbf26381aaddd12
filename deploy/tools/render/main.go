// Command render prints the manifests of a Helm chart the way
// `helm template <name> <chart> --namespace <ns> [-f values.yaml ...]` does,
// without helm (which cannot be installed on the project's CI machines).
//
// It uses Helm's own template engine: Go's text/template with the sprig
// function library, plus Helm's include, tpl, toYaml and required, and
// Helm's conventions: templates named <chart>/templates/<file>, files whose
// name starts with "_" hold only definitions, NOTES.txt is not a manifest,
// "<no value>" renders as "", documents are ordered by kind as Helm installs
// them and each is preceded by "---" and a "# Source:" comment. It covers
// what the hostprof chart uses; it is not a general Helm replacement.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	yamlv2 "gopkg.in/yaml.v2"
	yamlv3 "gopkg.in/yaml.v3"
)

// Helm's install order of the kinds this chart may render.
var kindOrder = []string{
	"Namespace", "ServiceAccount", "Secret", "ConfigMap", "ClusterRole",
	"ClusterRoleBinding", "Role", "RoleBinding", "Service", "DaemonSet",
}

type valueFiles []string

func (v *valueFiles) String() string     { return strings.Join(*v, ",") }
func (v *valueFiles) Set(s string) error { *v = append(*v, s); return nil }

func readYAML(path string) map[string]interface{} {
	data, err := os.ReadFile(path)
	if err != nil {
		fail("reading %s: %v", path, err)
	}
	out := map[string]interface{}{}
	if err := yamlv3.Unmarshal(data, &out); err != nil {
		fail("parsing %s: %v", path, err)
	}
	return out
}

// merge copies src into dst: maps merge key by key, anything else replaces.
func merge(dst, src map[string]interface{}) {
	for k, v := range src {
		if sm, ok := v.(map[string]interface{}); ok {
			if dm, ok := dst[k].(map[string]interface{}); ok {
				merge(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "render: "+format+"\n", args...)
	os.Exit(1)
}

var kindPattern = regexp.MustCompile(`(?m)^kind:\s*(\S+)`)

func kindRank(doc string) int {
	m := kindPattern.FindStringSubmatch(doc)
	if m == nil {
		return len(kindOrder)
	}
	for i, k := range kindOrder {
		if k == m[1] {
			return i
		}
	}
	return len(kindOrder)
}

type document struct {
	source string
	body   string
	rank   int
}

func main() {
	chartDir := flag.String("chart", "", "chart directory")
	name := flag.String("name", "hostprof", "release name")
	namespace := flag.String("namespace", "hostprof", "release namespace")
	var overrides valueFiles
	flag.Var(&overrides, "f", "values file merged over values.yaml (repeatable)")
	flag.Parse()
	if *chartDir == "" {
		fail("usage: render -chart DIR [-name NAME] [-namespace NS] [-f values.yaml ...]")
	}

	chart := readYAML(filepath.Join(*chartDir, "Chart.yaml"))
	values := readYAML(filepath.Join(*chartDir, "values.yaml"))
	for _, f := range overrides {
		merge(values, readYAML(f))
	}
	chartName, _ := chart["name"].(string)
	basePath := chartName + "/templates"

	var root *template.Template
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	funcs["toYaml"] = func(v interface{}) string {
		data, err := yamlv2.Marshal(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(data), "\n")
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return buf.String(), err
	}
	funcs["required"] = func(message string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return nil, fmt.Errorf("%s", message)
		}
		return v, nil
	}
	root = template.New(chartName).Funcs(funcs).Option("missingkey=zero")

	paths, err := filepath.Glob(filepath.Join(*chartDir, "templates", "*"))
	if err != nil {
		fail("listing templates: %v", err)
	}
	sort.Strings(paths)
	var manifests []string
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			fail("reading %s: %v", path, err)
		}
		file := filepath.Base(path)
		tname := basePath + "/" + file
		if _, err := root.New(tname).Parse(string(data)); err != nil {
			fail("parsing %s: %v", tname, err)
		}
		if !strings.HasPrefix(file, "_") && file != "NOTES.txt" {
			manifests = append(manifests, tname)
		}
	}

	var docs []document
	for _, tname := range manifests {
		top := map[string]interface{}{
			"Values": values,
			"Release": map[string]interface{}{
				"Name": *name, "Namespace": *namespace, "Service": "Helm",
				"IsInstall": true, "IsUpgrade": false, "Revision": 1,
			},
			"Chart": map[string]interface{}{
				"Name": chartName, "Version": chart["version"], "AppVersion": chart["appVersion"],
			},
			"Template": map[string]interface{}{"Name": tname, "BasePath": basePath},
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, tname, top); err != nil {
			fail("rendering %s: %v", tname, err)
		}
		rendered := strings.ReplaceAll(buf.String(), "<no value>", "")
		for _, part := range strings.Split(rendered, "\n---") {
			body := strings.TrimSpace(strings.TrimPrefix(part, "---"))
			if body == "" {
				continue
			}
			docs = append(docs, document{source: tname, body: body, rank: kindRank(body)})
		}
	}
	sort.SliceStable(docs, func(i, j int) bool { return docs[i].rank < docs[j].rank })
	for _, d := range docs {
		fmt.Printf("---\n# Source: %s\n%s\n", d.source, d.body)
	}
}
