package admission

import (
	"fmt"
	"hash/maphash"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	jsonv2 "github.com/go-json-experiment/json"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Hand decoders for the members nearly every review has (the request's
// identity, metadata, containers, env vars, ports, mounts), reading the
// scanner's tokens (scan.go) straight into the API types. For these,
// jsonv2's reflection (a sync.Map lookup of each value's type, a field
// lookup per member, an options merge per nested call) cost three times
// the reading of the tokens: the hand decoders took the medium review's
// decode from about 100 to 80 µs and a tenth off the whole review's CPU;
// the scanner, in place of jsontext's Decoder, a further quarter.
//
// Every member a hand decoder does not name goes to jsonv2 through the
// type's fieldIndex, with unread: a field added to k8s.io/api later
// decodes as before without a change here. The result must be exactly
// what jsonv2 with unread alone gives, or an error (the general path then
// decides): FuzzHandDecode compares the two.

// stringValue reads a string; null is "".
func stringValue(dec *scanner) (string, error) {
	switch k := dec.PeekKind(); k {
	case '"':
		b, err := dec.readString()
		return intern(b), err
	case 'n':
		return "", dec.readNull()
	default:
		return "", fmt.Errorf("want a string, got %v", k)
	}
}

// internTable holds recently decoded short strings, shared by all reviews:
// the same names, images, paths and values come back in every container
// and every pod of a deployment, and a string found here costs no
// allocation (a medium review's 240 allocations were over half strings).
// A slot holds a pointer, so concurrent reviews swap whole strings.
var (
	internTable [1024]atomic.Pointer[string]
	internSeed  = maphash.MakeSeed()
)

// maxInterned bounds the strings kept: 1024 slots of at most 32 bytes.
const maxInterned = 32

func intern(b []byte) string {
	if len(b) > maxInterned || len(b) == 0 {
		return string(b)
	}
	slot := &internTable[maphash.Bytes(internSeed, b)%uint64(len(internTable))]
	if p := slot.Load(); p != nil && *p == string(b) {
		return *p
	}
	s := string(b)
	slot.Store(&s)
	return s
}

// stringAs reads a string into a string type.
func stringAs[T ~string](dec *scanner, v *T) error {
	s, err := stringValue(dec)
	*v = T(s)
	return err
}

func boolValue(dec *scanner) (bool, error) {
	raw, err := dec.ReadValue()
	if err != nil {
		return false, err
	}
	switch k := raw.Kind(); k {
	case 't', 'f', 'n':
		return k == 't', nil
	default:
		return false, fmt.Errorf("want a boolean, got %v", k)
	}
}

// intValue reads an integer that fits bits bits, as jsonv2 does (no
// fraction, no exponent); null is 0.
func intValue(dec *scanner, bits int) (int64, error) {
	raw, err := dec.ReadValue()
	if err != nil {
		return 0, err
	}
	switch k := raw.Kind(); k {
	case '0':
		return strconv.ParseInt(string(raw), 10, bits)
	case 'n':
		return 0, nil
	default:
		return 0, fmt.Errorf("want a number, got %v", k)
	}
}

// ptrTo reads a value into a new T at *p with read; null is nil.
func ptrTo[T any](dec *scanner, p **T, read func(*scanner, *T) error) error {
	if dec.PeekKind() == 'n' {
		*p = nil
		return dec.readNull()
	}
	*p = new(T)
	return read(dec, *p)
}

// stringMap reads an object of strings (labels, annotations); null is nil.
func stringMap(dec *scanner, m *map[string]string) error {
	switch k := dec.PeekKind(); k {
	case 'n':
		*m = nil
		return dec.readNull()
	case '{':
	default:
		return fmt.Errorf("want an object, got %v", k)
	}
	if *m == nil {
		*m = map[string]string{}
	}
	return object(dec, func(name []byte) error {
		key := intern(name)
		v, err := stringValue(dec)
		(*m)[key] = v
		return err
	})
}

// list reads an array into a slice of exactly its length, each element
// with read; null is nil. jsonv2 grows a slice by doubling as it decodes,
// so a list of 40 env vars was allocated seven times over (127 elements'
// worth) and 10 containers (408 bytes each) five times: a third of the
// bytes a large pod's review allocated, and garbage the collector then had
// to chase. The elements go to a pooled scratch slice and are copied once.
func list[T any](dec *scanner, s *[]T, scratch *sync.Pool, read func(*scanner, *T) error) error {
	switch k := dec.PeekKind(); k {
	case 'n':
		*s = nil
		return dec.readNull()
	case '[':
	default:
		return fmt.Errorf("want an array, got %v", k)
	}
	buf := scratch.Get().(*[]T)
	tmp := (*buf)[:0]
	defer func() {
		clear(tmp) // drop the strings and pointers it holds
		*buf = tmp[:0]
		scratch.Put(buf)
	}()
	err := elements(dec, func() error {
		var zero T
		tmp = append(tmp, zero)
		return read(dec, &tmp[len(tmp)-1])
	})
	if err != nil {
		return err
	}
	*s = append(make([]T, 0, len(tmp)), tmp...)
	return nil
}

func scratchFor[T any]() *sync.Pool {
	return &sync.Pool{New: func() any { return new([]T) }}
}

var (
	containerScratch = scratchFor[corev1.Container]()
	volumeScratch    = scratchFor[corev1.Volume]()
	envScratch       = scratchFor[corev1.EnvVar]()
	portScratch      = scratchFor[corev1.ContainerPort]()
	mountScratch     = scratchFor[corev1.VolumeMount]()
	stringScratch    = scratchFor[string]()
)

func stringElem(dec *scanner, s *string) (err error) {
	*s, err = stringValue(dec)
	return err
}

func boolElem(dec *scanner, b *bool) (err error) {
	*b, err = boolValue(dec)
	return err
}

func int64Elem(dec *scanner, n *int64) (err error) {
	*n, err = intValue(dec, 64)
	return err
}

// fieldIndex maps the JSON names of a struct's fields, those of embedded
// structs without a name included, to where they are: for the members a
// hand decoder leaves to jsonv2.
type fieldIndex map[string]field

type field struct {
	index []int
	// skip: an unread type, consumed here (as its unmarshaler in unread
	// would, at the cost of a call into jsonv2).
	skip bool
}

func fieldsOf[T any]() fieldIndex {
	var all []candidate
	collectFields(reflect.TypeFor[T](), nil, &all)
	byName := map[string][]candidate{}
	for _, c := range all {
		byName[c.name] = append(byName[c.name], c)
	}
	// As in jsonv2: of the fields with one name the shallowest wins, then
	// the one with a JSON name (tag); fields that still tie hide each
	// other and are not decoded (there are none in these types).
	f := fieldIndex{}
	for name, cs := range byName {
		depth := slices.MinFunc(cs, func(a, b candidate) int { return len(a.index) - len(b.index) })
		cs = slices.DeleteFunc(cs, func(c candidate) bool { return len(c.index) > len(depth.index) })
		if len(cs) > 1 {
			cs = slices.DeleteFunc(cs, func(c candidate) bool { return !c.tagged })
		}
		if len(cs) == 1 {
			f[name] = field{index: cs[0].index, skip: isUnread(cs[0].typ)}
		}
	}
	return f
}

// candidate is a field that may decode a JSON member.
type candidate struct {
	name   string
	index  []int
	tagged bool
	typ    reflect.Type
}

// collectFields lists t's fields by JSON name, those of embedded structs
// without one inlined.
func collectFields(t reflect.Type, at []int, out *[]candidate) {
	for i := range t.NumField() {
		sf := t.Field(i)
		tag := sf.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		idx := append(append([]int{}, at...), i)
		if sf.Anonymous && name == "" {
			if sf.Type.Kind() != reflect.Struct {
				// jsonv2 inlines an embedded *struct too, allocating it;
				// decode here would dereference nil. No such field in
				// these types: TestFieldIndex fails (at init) if one comes.
				panic(fmt.Sprintf("admission: %v embeds %v: only embedded structs are inlined here", t, sf.Type))
			}
			collectFields(sf.Type, idx, out)
			continue
		}
		if !sf.IsExported() {
			continue
		}
		c := candidate{name: name, index: idx, tagged: name != "", typ: sf.Type}
		if name == "" {
			c.name = sf.Name
		}
		*out = append(*out, c)
	}
}

// decode decodes member name of the struct v points to with jsonv2 and
// unread; an unknown name is skipped, as jsonv2 does.
func (f fieldIndex) decode(dec *scanner, v reflect.Value, name []byte) error {
	fd, ok := f[string(name)]
	if !ok || fd.skip {
		return dec.SkipValue()
	}
	raw, err := dec.readValueFor() // within the depth limit; Unmarshal validates
	if err != nil {
		return err
	}
	return jsonv2.Unmarshal(raw, v.Elem().FieldByIndex(fd.index).Addr().Interface(), withUnread)
}

var (
	reviewFields       = fieldsOf[podReview]()
	requestFields      = fieldsOf[podRequest]()
	gvkFields          = fieldsOf[metav1.GroupVersionKind]()
	gvrFields          = fieldsOf[metav1.GroupVersionResource]()
	userFields         = fieldsOf[authenticationv1.UserInfo]()
	podFields          = fieldsOf[corev1.Pod]()
	metaFields         = fieldsOf[metav1.ObjectMeta]()
	specFields         = fieldsOf[corev1.PodSpec]()
	volumeFields       = fieldsOf[corev1.Volume]()
	containerFields    = fieldsOf[corev1.Container]()
	portFields         = fieldsOf[corev1.ContainerPort]()
	mountFields        = fieldsOf[corev1.VolumeMount]()
	envFields          = fieldsOf[corev1.EnvVar]()
	sourceFields       = fieldsOf[corev1.EnvVarSource]()
	configMapKeyFields = fieldsOf[corev1.ConfigMapKeySelector]()
	secretKeyFields    = fieldsOf[corev1.SecretKeySelector]()
	fieldRefFields     = fieldsOf[corev1.ObjectFieldSelector]()
)

func handReview(dec *scanner, r *podReview) error {
	return object(dec, func(name []byte) (err error) {
		switch string(name) {
		case "kind":
			r.Kind, err = stringValue(dec)
		case "apiVersion":
			r.APIVersion, err = stringValue(dec)
		case "request":
			err = ptrTo(dec, &r.Request, handRequest)
		default:
			err = reviewFields.decode(dec, reflect.ValueOf(r), name)
		}
		return err
	})
}

func handRequest(dec *scanner, r *podRequest) error {
	return object(dec, func(name []byte) (err error) {
		switch string(name) {
		case "uid":
			err = stringAs(dec, &r.UID)
		case "kind":
			err = handGVK(dec, &r.Kind)
		case "requestKind":
			err = ptrTo(dec, &r.RequestKind, handGVK)
		case "resource":
			err = handGVR(dec, &r.Resource)
		case "requestResource":
			err = ptrTo(dec, &r.RequestResource, handGVR)
		case "userInfo":
			err = handUser(dec, &r.UserInfo)
		case "dryRun":
			err = ptrTo(dec, &r.DryRun, boolElem)
		case "subResource":
			r.SubResource, err = stringValue(dec)
		case "name":
			r.Name, err = stringValue(dec)
		case "namespace":
			r.Namespace, err = stringValue(dec)
		case "operation":
			err = stringAs(dec, &r.Operation)
		case "object":
			err = ptrTo(dec, &r.Object, handPod)
		default:
			err = requestFields.decode(dec, reflect.ValueOf(r), name)
		}
		return err
	})
}

func handGVK(dec *scanner, g *metav1.GroupVersionKind) error {
	return object(dec, func(name []byte) (err error) {
		switch string(name) {
		case "group":
			g.Group, err = stringValue(dec)
		case "version":
			g.Version, err = stringValue(dec)
		case "kind":
			g.Kind, err = stringValue(dec)
		default:
			err = gvkFields.decode(dec, reflect.ValueOf(g), name)
		}
		return err
	})
}

func handGVR(dec *scanner, g *metav1.GroupVersionResource) error {
	return object(dec, func(name []byte) (err error) {
		switch string(name) {
		case "group":
			g.Group, err = stringValue(dec)
		case "version":
			g.Version, err = stringValue(dec)
		case "resource":
			g.Resource, err = stringValue(dec)
		default:
			err = gvrFields.decode(dec, reflect.ValueOf(g), name)
		}
		return err
	})
}

func handUser(dec *scanner, u *authenticationv1.UserInfo) error {
	return object(dec, func(name []byte) (err error) {
		switch string(name) {
		case "username":
			u.Username, err = stringValue(dec)
		case "uid":
			u.UID, err = stringValue(dec)
		case "groups":
			err = list(dec, &u.Groups, stringScratch, stringElem)
		default:
			err = userFields.decode(dec, reflect.ValueOf(u), name)
		}
		return err
	})
}

func handPod(dec *scanner, p *corev1.Pod) error {
	return object(dec, func(name []byte) (err error) {
		switch string(name) {
		case "kind":
			p.Kind, err = stringValue(dec)
		case "apiVersion":
			p.APIVersion, err = stringValue(dec)
		case "metadata":
			err = handMeta(dec, &p.ObjectMeta)
		case "spec":
			err = handSpec(dec, &p.Spec)
		default:
			err = podFields.decode(dec, reflect.ValueOf(p), name)
		}
		return err
	})
}

func handMeta(dec *scanner, m *metav1.ObjectMeta) error {
	return object(dec, func(name []byte) (err error) {
		switch string(name) {
		case "name":
			m.Name, err = stringValue(dec)
		case "generateName":
			m.GenerateName, err = stringValue(dec)
		case "namespace":
			m.Namespace, err = stringValue(dec)
		case "uid":
			err = stringAs(dec, &m.UID)
		case "labels":
			err = stringMap(dec, &m.Labels)
		case "annotations":
			err = stringMap(dec, &m.Annotations)
		default:
			err = metaFields.decode(dec, reflect.ValueOf(m), name)
		}
		return err
	})
}

func handSpec(dec *scanner, s *corev1.PodSpec) error {
	return object(dec, func(name []byte) (err error) {
		switch string(name) {
		case "initContainers":
			err = list(dec, &s.InitContainers, containerScratch, handContainer)
		case "containers":
			err = list(dec, &s.Containers, containerScratch, handContainer)
		case "volumes":
			err = list(dec, &s.Volumes, volumeScratch, handVolume)
		case "terminationGracePeriodSeconds":
			err = ptrTo(dec, &s.TerminationGracePeriodSeconds, int64Elem)
		case "restartPolicy":
			err = stringAs(dec, &s.RestartPolicy)
		case "dnsPolicy":
			err = stringAs(dec, &s.DNSPolicy)
		case "serviceAccountName":
			s.ServiceAccountName, err = stringValue(dec)
		case "nodeName":
			s.NodeName, err = stringValue(dec)
		case "schedulerName":
			s.SchedulerName, err = stringValue(dec)
		default:
			err = specFields.decode(dec, reflect.ValueOf(s), name)
		}
		return err
	})
}

// handVolume decodes a volume's name; its source (configMap, secret, …)
// is left to jsonv2.
func handVolume(dec *scanner, v *corev1.Volume) error {
	return object(dec, func(name []byte) (err error) {
		if string(name) == "name" {
			v.Name, err = stringValue(dec)
			return err
		}
		return volumeFields.decode(dec, reflect.ValueOf(v), name)
	})
}

func handContainer(dec *scanner, c *corev1.Container) error {
	return object(dec, func(name []byte) (err error) {
		switch string(name) {
		case "name":
			c.Name, err = stringValue(dec)
		case "image":
			c.Image, err = stringValue(dec)
		case "command":
			err = list(dec, &c.Command, stringScratch, stringElem)
		case "args":
			err = list(dec, &c.Args, stringScratch, stringElem)
		case "workingDir":
			c.WorkingDir, err = stringValue(dec)
		case "ports":
			err = list(dec, &c.Ports, portScratch, handPort)
		case "env":
			err = list(dec, &c.Env, envScratch, handEnv)
		case "resources":
			err = resourcesQoS(dec, &c.Resources)
		case "volumeMounts":
			err = list(dec, &c.VolumeMounts, mountScratch, handMount)
		case "terminationMessagePath":
			c.TerminationMessagePath, err = stringValue(dec)
		case "terminationMessagePolicy":
			err = stringAs(dec, &c.TerminationMessagePolicy)
		case "imagePullPolicy":
			err = stringAs(dec, &c.ImagePullPolicy)
		default:
			err = containerFields.decode(dec, reflect.ValueOf(c), name)
		}
		return err
	})
}

func handPort(dec *scanner, p *corev1.ContainerPort) error {
	return object(dec, func(name []byte) (err error) {
		switch string(name) {
		case "name":
			p.Name, err = stringValue(dec)
		case "containerPort":
			var n int64
			n, err = intValue(dec, 32)
			p.ContainerPort = int32(n)
		case "protocol":
			err = stringAs(dec, &p.Protocol)
		default:
			err = portFields.decode(dec, reflect.ValueOf(p), name)
		}
		return err
	})
}

func handMount(dec *scanner, m *corev1.VolumeMount) error {
	return object(dec, func(name []byte) (err error) {
		switch string(name) {
		case "name":
			m.Name, err = stringValue(dec)
		case "mountPath":
			m.MountPath, err = stringValue(dec)
		case "readOnly":
			m.ReadOnly, err = boolValue(dec)
		case "subPath":
			m.SubPath, err = stringValue(dec)
		default:
			err = mountFields.decode(dec, reflect.ValueOf(m), name)
		}
		return err
	})
}

func handEnv(dec *scanner, e *corev1.EnvVar) error {
	return object(dec, func(name []byte) (err error) {
		switch string(name) {
		case "name":
			e.Name, err = stringValue(dec)
		case "value":
			e.Value, err = stringValue(dec)
		case "valueFrom":
			err = ptrTo(dec, &e.ValueFrom, handSource)
		default:
			err = envFields.decode(dec, reflect.ValueOf(e), name)
		}
		return err
	})
}

func handSource(dec *scanner, s *corev1.EnvVarSource) error {
	return object(dec, func(name []byte) (err error) {
		switch string(name) {
		case "configMapKeyRef":
			err = ptrTo(dec, &s.ConfigMapKeyRef, handConfigMapKey)
		case "secretKeyRef":
			err = ptrTo(dec, &s.SecretKeyRef, handSecretKey)
		case "fieldRef":
			err = ptrTo(dec, &s.FieldRef, handFieldRef)
		default:
			err = sourceFields.decode(dec, reflect.ValueOf(s), name)
		}
		return err
	})
}

func handConfigMapKey(dec *scanner, k *corev1.ConfigMapKeySelector) error {
	return object(dec, func(name []byte) error {
		if ok, err := handKey(dec, name, &k.Name, &k.Key, &k.Optional); ok {
			return err
		}
		return configMapKeyFields.decode(dec, reflect.ValueOf(k), name)
	})
}

func handSecretKey(dec *scanner, k *corev1.SecretKeySelector) error {
	return object(dec, func(name []byte) error {
		if ok, err := handKey(dec, name, &k.Name, &k.Key, &k.Optional); ok {
			return err
		}
		return secretKeyFields.decode(dec, reflect.ValueOf(k), name)
	})
}

// handKey decodes a member ConfigMapKeySelector and SecretKeySelector
// share; false for any other.
func handKey(dec *scanner, member []byte, name, key *string, optional **bool) (bool, error) {
	var err error
	switch string(member) {
	case "name":
		*name, err = stringValue(dec)
	case "key":
		*key, err = stringValue(dec)
	case "optional":
		err = ptrTo(dec, optional, boolElem)
	default:
		return false, nil
	}
	return true, err
}

func handFieldRef(dec *scanner, f *corev1.ObjectFieldSelector) error {
	return object(dec, func(name []byte) (err error) {
		switch string(name) {
		case "apiVersion":
			f.APIVersion, err = stringValue(dec)
		case "fieldPath":
			f.FieldPath, err = stringValue(dec)
		default:
			err = fieldRefFields.decode(dec, reflect.ValueOf(f), name)
		}
		return err
	})
}

// resourcesQoS decodes the CPU and memory of a ResourceRequirements'
// requests and limits, and skips the rest (other resources, claims): the
// generic decode of the lists was a quarter of the medium pod's decode.
func resourcesQoS(dec *scanner, r *corev1.ResourceRequirements) error {
	return object(dec, func(name []byte) (err error) {
		switch string(name) {
		case "requests":
			r.Requests, err = cpuMemory(dec)
		case "limits":
			r.Limits, err = cpuMemory(dec)
		default:
			err = dec.SkipValue()
		}
		return err
	})
}

func cpuMemory(dec *scanner) (l corev1.ResourceList, err error) {
	err = object(dec, func(name []byte) error {
		var res corev1.ResourceName
		switch string(name) {
		case string(corev1.ResourceCPU):
			res = corev1.ResourceCPU
		case string(corev1.ResourceMemory):
			res = corev1.ResourceMemory
		default:
			return dec.SkipValue()
		}
		if dec.PeekKind() != '"' {
			return fmt.Errorf("quantity %s: want a string", res)
		}
		v, err := dec.readString()
		if err != nil {
			return err
		}
		q, err := parseQuantity(v)
		if err != nil {
			return err
		}
		if l == nil {
			l = make(corev1.ResourceList, 2)
		}
		l[res] = q
		return nil
	})
	return l, err
}

// quantityTable holds recently parsed quantities, like internTable the
// strings: a deployment's pods repeat the same few, and parsing each (and
// the string it keeps) was 2 % of a review's CPU. Only quantities held in
// an int64 are kept: a copy of one shares nothing mutable (the others
// point to an inf.Dec, which Quantity's methods change in place).
var quantityTable [256]atomic.Pointer[parsedQuantity]

type parsedQuantity struct {
	raw string
	q   resource.Quantity
}

// maxQuantityLen bounds the quantities kept ("1500m", "512Mi", "100M").
const maxQuantityLen = 16

func parseQuantity(b []byte) (resource.Quantity, error) {
	if len(b) > maxQuantityLen {
		return resource.ParseQuantity(string(b))
	}
	slot := &quantityTable[maphash.Bytes(internSeed, b)%uint64(len(quantityTable))]
	if p := slot.Load(); p != nil && p.raw == string(b) {
		return p.q, nil
	}
	raw := string(b)
	q, err := resource.ParseQuantity(raw)
	if err == nil && isInt64Quantity(&q) {
		slot.Store(&parsedQuantity{raw: raw, q: q})
	}
	return q, err
}

// isInt64Quantity: q holds no *inf.Dec (read by reflection: the field is
// unexported).
func isInt64Quantity(q *resource.Quantity) bool {
	d := reflect.ValueOf(q).Elem().FieldByName("d")
	if !d.IsValid() {
		return false // another layout: keep nothing
	}
	dec := d.FieldByName("Dec")
	return dec.IsValid() && dec.Kind() == reflect.Pointer && dec.IsNil()
}
