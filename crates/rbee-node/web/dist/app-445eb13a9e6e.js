var se,x,Re,vt,W,Fe,Ue,qe,Be,fe,de,pe,yt,K={},We=[],kt=/acit|ex(?:s|g|n|p|$)|rph|grid|ows|mnc|ntw|ine[ch]|zoo|^ord|itera/i,re=Array.isArray;function q(e,t){for(var n in t)e[n]=t[n];return e}function he(e){e&&e.parentNode&&e.parentNode.removeChild(e)}function Q(e,t,n){var s,a,o,r={};for(o in t)o=="key"?s=t[o]:o=="ref"?a=t[o]:r[o]=t[o];if(arguments.length>2&&(r.children=arguments.length>3?se.call(arguments,2):n),typeof e=="function"&&e.defaultProps!=null)for(o in e.defaultProps)r[o]===void 0&&(r[o]=e.defaultProps[o]);return te(e,r,s,a,null)}function te(e,t,n,s,a){var o={type:e,props:t,key:n,ref:s,__k:null,__:null,__b:0,__e:null,__c:null,constructor:void 0,__v:a??++Re,__i:-1,__u:0};return a==null&&x.vnode!=null&&x.vnode(o),o}function ae(e){return e.children}function ne(e,t){this.props=e,this.context=t}function V(e,t){if(t==null)return e.__?V(e.__,e.__i+1):null;for(var n;t<e.__k.length;t++)if((n=e.__k[t])!=null&&n.__e!=null)return n.__e;return typeof e.type=="function"?V(e):null}function Je(e){var t,n;if((e=e.__)!=null&&e.__c!=null){for(e.__e=e.__c.base=null,t=0;t<e.__k.length;t++)if((n=e.__k[t])!=null&&n.__e!=null){e.__e=e.__c.base=n.__e;break}return Je(e)}}function He(e){(!e.__d&&(e.__d=!0)&&W.push(e)&&!oe.__r++||Fe!=x.debounceRendering)&&((Fe=x.debounceRendering)||Ue)(oe)}function oe(){for(var e,t,n,s,a,o,r,i=1;W.length;)W.length>i&&W.sort(qe),e=W.shift(),i=W.length,e.__d&&(n=void 0,s=void 0,a=(s=(t=e).__v).__e,o=[],r=[],t.__P&&((n=q({},s)).__v=s.__v+1,x.vnode&&x.vnode(n),$e(t.__P,n,s,t.__n,t.__P.namespaceURI,32&s.__u?[a]:null,o,a??V(s),!!(32&s.__u),r),n.__v=s.__v,n.__.__k[n.__i]=n,ze(o,n,r),s.__e=s.__=null,n.__e!=a&&Je(n)));oe.__r=0}function Ve(e,t,n,s,a,o,r,i,_,c,u){var l,h,m,y,E,w,v,b=s&&s.__k||We,N=t.length;for(_=wt(n,t,b,_,N),l=0;l<N;l++)(m=n.__k[l])!=null&&(h=m.__i==-1?K:b[m.__i]||K,m.__i=l,w=$e(e,m,h,a,o,r,i,_,c,u),y=m.__e,m.ref&&h.ref!=m.ref&&(h.ref&&be(h.ref,null,m),u.push(m.ref,m.__c||y,m)),E==null&&y!=null&&(E=y),(v=!!(4&m.__u))||h.__k===m.__k?_=je(m,_,e,v):typeof m.type=="function"&&w!==void 0?_=w:y&&(_=y.nextSibling),m.__u&=-7);return n.__e=E,_}function wt(e,t,n,s,a){var o,r,i,_,c,u=n.length,l=u,h=0;for(e.__k=new Array(a),o=0;o<a;o++)(r=t[o])!=null&&typeof r!="boolean"&&typeof r!="function"?(typeof r=="string"||typeof r=="number"||typeof r=="bigint"||r.constructor==String?r=e.__k[o]=te(null,r,null,null,null):re(r)?r=e.__k[o]=te(ae,{children:r},null,null,null):r.constructor===void 0&&r.__b>0?r=e.__k[o]=te(r.type,r.props,r.key,r.ref?r.ref:null,r.__v):e.__k[o]=r,_=o+h,r.__=e,r.__b=e.__b+1,i=null,(c=r.__i=xt(r,n,_,l))!=-1&&(l--,(i=n[c])&&(i.__u|=2)),i==null||i.__v==null?(c==-1&&(a>u?h--:a<u&&h++),typeof r.type!="function"&&(r.__u|=4)):c!=_&&(c==_-1?h--:c==_+1?h++:(c>_?h--:h++,r.__u|=4))):e.__k[o]=null;if(l)for(o=0;o<u;o++)(i=n[o])!=null&&(2&i.__u)==0&&(i.__e==s&&(s=V(i)),Ke(i,i));return s}function je(e,t,n,s){var a,o;if(typeof e.type=="function"){for(a=e.__k,o=0;a&&o<a.length;o++)a[o]&&(a[o].__=e,t=je(a[o],t,n,s));return t}e.__e!=t&&(s&&(t&&e.type&&!t.parentNode&&(t=V(e)),n.insertBefore(e.__e,t||null)),t=e.__e);do t=t&&t.nextSibling;while(t!=null&&t.nodeType==8);return t}function xt(e,t,n,s){var a,o,r,i=e.key,_=e.type,c=t[n],u=c!=null&&(2&c.__u)==0;if(c===null&&i==null||u&&i==c.key&&_==c.type)return n;if(s>(u?1:0)){for(a=n-1,o=n+1;a>=0||o<t.length;)if((c=t[r=a>=0?a--:o++])!=null&&(2&c.__u)==0&&i==c.key&&_==c.type)return r}return-1}function Le(e,t,n){t[0]=="-"?e.setProperty(t,n??""):e[t]=n==null?"":typeof n!="number"||kt.test(t)?n:n+"px"}function ee(e,t,n,s,a){var o,r;e:if(t=="style")if(typeof n=="string")e.style.cssText=n;else{if(typeof s=="string"&&(e.style.cssText=s=""),s)for(t in s)n&&t in n||Le(e.style,t,"");if(n)for(t in n)s&&n[t]==s[t]||Le(e.style,t,n[t])}else if(t[0]=="o"&&t[1]=="n")o=t!=(t=t.replace(Be,"$1")),r=t.toLowerCase(),t=r in e||t=="onFocusOut"||t=="onFocusIn"?r.slice(2):t.slice(2),e.l||(e.l={}),e.l[t+o]=n,n?s?n.u=s.u:(n.u=fe,e.addEventListener(t,o?pe:de,o)):e.removeEventListener(t,o?pe:de,o);else{if(a=="http://www.w3.org/2000/svg")t=t.replace(/xlink(H|:h)/,"h").replace(/sName$/,"s");else if(t!="width"&&t!="height"&&t!="href"&&t!="list"&&t!="form"&&t!="tabIndex"&&t!="download"&&t!="rowSpan"&&t!="colSpan"&&t!="role"&&t!="popover"&&t in e)try{e[t]=n??"";break e}catch{}typeof n=="function"||(n==null||n===!1&&t[4]!="-"?e.removeAttribute(t):e.setAttribute(t,t=="popover"&&n==1?"":n))}}function Oe(e){return function(t){if(this.l){var n=this.l[t.type+e];if(t.t==null)t.t=fe++;else if(t.t<n.u)return;return n(x.event?x.event(t):t)}}}function $e(e,t,n,s,a,o,r,i,_,c){var u,l,h,m,y,E,w,v,b,N,S,A,D,p,f,d,k,M=t.type;if(t.constructor!==void 0)return null;128&n.__u&&(_=!!(32&n.__u),o=[i=t.__e=n.__e]),(u=x.__b)&&u(t);e:if(typeof M=="function")try{if(v=t.props,b="prototype"in M&&M.prototype.render,N=(u=M.contextType)&&s[u.__c],S=u?N?N.props.value:u.__:s,n.__c?w=(l=t.__c=n.__c).__=l.__E:(b?t.__c=l=new M(v,S):(t.__c=l=new ne(v,S),l.constructor=M,l.render=St),N&&N.sub(l),l.state||(l.state={}),l.__n=s,h=l.__d=!0,l.__h=[],l._sb=[]),b&&l.__s==null&&(l.__s=l.state),b&&M.getDerivedStateFromProps!=null&&(l.__s==l.state&&(l.__s=q({},l.__s)),q(l.__s,M.getDerivedStateFromProps(v,l.__s))),m=l.props,y=l.state,l.__v=t,h)b&&M.getDerivedStateFromProps==null&&l.componentWillMount!=null&&l.componentWillMount(),b&&l.componentDidMount!=null&&l.__h.push(l.componentDidMount);else{if(b&&M.getDerivedStateFromProps==null&&v!==m&&l.componentWillReceiveProps!=null&&l.componentWillReceiveProps(v,S),t.__v==n.__v||!l.__e&&l.shouldComponentUpdate!=null&&l.shouldComponentUpdate(v,l.__s,S)===!1){for(t.__v!=n.__v&&(l.props=v,l.state=l.__s,l.__d=!1),t.__e=n.__e,t.__k=n.__k,t.__k.some(function(L){L&&(L.__=t)}),A=0;A<l._sb.length;A++)l.__h.push(l._sb[A]);l._sb=[],l.__h.length&&r.push(l);break e}l.componentWillUpdate!=null&&l.componentWillUpdate(v,l.__s,S),b&&l.componentDidUpdate!=null&&l.__h.push(function(){l.componentDidUpdate(m,y,E)})}if(l.context=S,l.props=v,l.__P=e,l.__e=!1,D=x.__r,p=0,b){for(l.state=l.__s,l.__d=!1,D&&D(t),u=l.render(l.props,l.state,l.context),f=0;f<l._sb.length;f++)l.__h.push(l._sb[f]);l._sb=[]}else do l.__d=!1,D&&D(t),u=l.render(l.props,l.state,l.context),l.state=l.__s;while(l.__d&&++p<25);l.state=l.__s,l.getChildContext!=null&&(s=q(q({},s),l.getChildContext())),b&&!h&&l.getSnapshotBeforeUpdate!=null&&(E=l.getSnapshotBeforeUpdate(m,y)),d=u,u!=null&&u.type===ae&&u.key==null&&(d=Ge(u.props.children)),i=Ve(e,re(d)?d:[d],t,n,s,a,o,r,i,_,c),l.base=t.__e,t.__u&=-161,l.__h.length&&r.push(l),w&&(l.__E=l.__=null)}catch(L){if(t.__v=null,_||o!=null)if(L.then){for(t.__u|=_?160:128;i&&i.nodeType==8&&i.nextSibling;)i=i.nextSibling;o[o.indexOf(i)]=null,t.__e=i}else{for(k=o.length;k--;)he(o[k]);me(t)}else t.__e=n.__e,t.__k=n.__k,L.then||me(t);x.__e(L,t,n)}else o==null&&t.__v==n.__v?(t.__k=n.__k,t.__e=n.__e):i=t.__e=Et(n.__e,t,n,s,a,o,r,_,c);return(u=x.diffed)&&u(t),128&t.__u?void 0:i}function me(e){e&&e.__c&&(e.__c.__e=!0),e&&e.__k&&e.__k.forEach(me)}function ze(e,t,n){for(var s=0;s<n.length;s++)be(n[s],n[++s],n[++s]);x.__c&&x.__c(t,e),e.some(function(a){try{e=a.__h,a.__h=[],e.some(function(o){o.call(a)})}catch(o){x.__e(o,a.__v)}})}function Ge(e){return typeof e!="object"||e==null||e.__b&&e.__b>0?e:re(e)?e.map(Ge):q({},e)}function Et(e,t,n,s,a,o,r,i,_){var c,u,l,h,m,y,E,w=n.props||K,v=t.props,b=t.type;if(b=="svg"?a="http://www.w3.org/2000/svg":b=="math"?a="http://www.w3.org/1998/Math/MathML":a||(a="http://www.w3.org/1999/xhtml"),o!=null){for(c=0;c<o.length;c++)if((m=o[c])&&"setAttribute"in m==!!b&&(b?m.localName==b:m.nodeType==3)){e=m,o[c]=null;break}}if(e==null){if(b==null)return document.createTextNode(v);e=document.createElementNS(a,b,v.is&&v),i&&(x.__m&&x.__m(t,o),i=!1),o=null}if(b==null)w===v||i&&e.data==v||(e.data=v);else{if(o=o&&se.call(e.childNodes),!i&&o!=null)for(w={},c=0;c<e.attributes.length;c++)w[(m=e.attributes[c]).name]=m.value;for(c in w)if(m=w[c],c!="children"){if(c=="dangerouslySetInnerHTML")l=m;else if(!(c in v)){if(c=="value"&&"defaultValue"in v||c=="checked"&&"defaultChecked"in v)continue;ee(e,c,null,m,a)}}for(c in v)m=v[c],c=="children"?h=m:c=="dangerouslySetInnerHTML"?u=m:c=="value"?y=m:c=="checked"?E=m:i&&typeof m!="function"||w[c]===m||ee(e,c,m,w[c],a);if(u)i||l&&(u.__html==l.__html||u.__html==e.innerHTML)||(e.innerHTML=u.__html),t.__k=[];else if(l&&(e.innerHTML=""),Ve(t.type=="template"?e.content:e,re(h)?h:[h],t,n,s,b=="foreignObject"?"http://www.w3.org/1999/xhtml":a,o,r,o?o[0]:n.__k&&V(n,0),i,_),o!=null)for(c=o.length;c--;)he(o[c]);i||(c="value",b=="progress"&&y==null?e.removeAttribute("value"):y!=null&&(y!==e[c]||b=="progress"&&!y||b=="option"&&y!=w[c])&&ee(e,c,y,w[c],a),c="checked",E!=null&&E!=e[c]&&ee(e,c,E,w[c],a))}return e}function be(e,t,n){try{if(typeof e=="function"){var s=typeof e.__u=="function";s&&e.__u(),s&&t==null||(e.__u=e(t))}else e.current=t}catch(a){x.__e(a,n)}}function Ke(e,t,n){var s,a;if(x.unmount&&x.unmount(e),(s=e.ref)&&(s.current&&s.current!=e.__e||be(s,null,t)),(s=e.__c)!=null){if(s.componentWillUnmount)try{s.componentWillUnmount()}catch(o){x.__e(o,t)}s.base=s.__P=null}if(s=e.__k)for(a=0;a<s.length;a++)s[a]&&Ke(s[a],t,n||typeof e.type!="function");n||he(e.__e),e.__c=e.__=e.__e=void 0}function St(e,t,n){return this.constructor(e,n)}function Qe(e,t,n){var s,a,o,r;t==document&&(t=document.documentElement),x.__&&x.__(e,t),a=(s=typeof n=="function")?null:n&&n.__k||t.__k,o=[],r=[],$e(t,e=(!s&&n||t).__k=Q(ae,null,[e]),a||K,K,t.namespaceURI,!s&&n?[n]:a?null:t.firstChild?se.call(t.childNodes):null,o,!s&&n?n:a?a.__e:t.firstChild,s,r),ze(o,e,r)}se=We.slice,x={__e:function(e,t,n,s){for(var a,o,r;t=t.__;)if((a=t.__c)&&!a.__)try{if((o=a.constructor)&&o.getDerivedStateFromError!=null&&(a.setState(o.getDerivedStateFromError(e)),r=a.__d),a.componentDidCatch!=null&&(a.componentDidCatch(e,s||{}),r=a.__d),r)return a.__E=a}catch(i){e=i}throw e}},Re=0,vt=function(e){return e!=null&&e.constructor===void 0},ne.prototype.setState=function(e,t){var n;n=this.__s!=null&&this.__s!=this.state?this.__s:this.__s=q({},this.state),typeof e=="function"&&(e=e(q({},n),this.props)),e&&q(n,e),e!=null&&this.__v&&(t&&this._sb.push(t),He(this))},ne.prototype.forceUpdate=function(e){this.__v&&(this.__e=!0,e&&this.__h.push(e),He(this))},ne.prototype.render=ae,W=[],Ue=typeof Promise=="function"?Promise.prototype.then.bind(Promise.resolve()):setTimeout,qe=function(e,t){return e.__v.__b-t.__v.__b},oe.__r=0,Be=/(PointerCapture)$|Capture$/i,fe=0,de=Oe(!1),pe=Oe(!0),yt=0;var Y,C,ge,Ye,ie=0,rt=[],P=x,Xe=P.__b,Ze=P.__r,et=P.diffed,tt=P.__c,nt=P.unmount,ot=P.__;function ye(e,t){P.__h&&P.__h(C,e,ie||t),ie=0;var n=C.__H||(C.__H={__:[],__h:[]});return e>=n.__.length&&n.__.push({}),n.__[e]}function g(e){return ie=1,Tt(it,e)}function Tt(e,t,n){var s=ye(Y++,2);if(s.t=e,!s.__c&&(s.__=[n?n(t):it(void 0,t),function(i){var _=s.__N?s.__N[0]:s.__[0],c=s.t(_,i);_!==c&&(s.__N=[c,s.__[1]],s.__c.setState({}))}],s.__c=C,!C.__f)){var a=function(i,_,c){if(!s.__c.__H)return!0;var u=s.__c.__H.__.filter(function(h){return!!h.__c});if(u.every(function(h){return!h.__N}))return!o||o.call(this,i,_,c);var l=s.__c.props!==i;return u.forEach(function(h){if(h.__N){var m=h.__[0];h.__=h.__N,h.__N=void 0,m!==h.__[0]&&(l=!0)}}),o&&o.call(this,i,_,c)||l};C.__f=!0;var o=C.shouldComponentUpdate,r=C.componentWillUpdate;C.componentWillUpdate=function(i,_,c){if(this.__e){var u=o;o=void 0,a(i,_,c),o=u}r&&r.call(this,i,_,c)},C.shouldComponentUpdate=a}return s.__N||s.__}function B(e,t){var n=ye(Y++,3);!P.__s&&lt(n.__H,t)&&(n.__=e,n.u=t,C.__H.__h.push(n))}function at(e){return ie=5,Ct(function(){return{current:e}},[])}function Ct(e,t){var n=ye(Y++,7);return lt(n.__H,t)&&(n.__=e(),n.__H=t,n.__h=e),n.__}function Mt(){for(var e;e=rt.shift();)if(e.__P&&e.__H)try{e.__H.__h.forEach(le),e.__H.__h.forEach(ve),e.__H.__h=[]}catch(t){e.__H.__h=[],P.__e(t,e.__v)}}P.__b=function(e){C=null,Xe&&Xe(e)},P.__=function(e,t){e&&t.__k&&t.__k.__m&&(e.__m=t.__k.__m),ot&&ot(e,t)},P.__r=function(e){Ze&&Ze(e),Y=0;var t=(C=e.__c).__H;t&&(ge===C?(t.__h=[],C.__h=[],t.__.forEach(function(n){n.__N&&(n.__=n.__N),n.u=n.__N=void 0})):(t.__h.forEach(le),t.__h.forEach(ve),t.__h=[],Y=0)),ge=C},P.diffed=function(e){et&&et(e);var t=e.__c;t&&t.__H&&(t.__H.__h.length&&(rt.push(t)!==1&&Ye===P.requestAnimationFrame||((Ye=P.requestAnimationFrame)||Pt)(Mt)),t.__H.__.forEach(function(n){n.u&&(n.__H=n.u),n.u=void 0})),ge=C=null},P.__c=function(e,t){t.some(function(n){try{n.__h.forEach(le),n.__h=n.__h.filter(function(s){return!s.__||ve(s)})}catch(s){t.some(function(a){a.__h&&(a.__h=[])}),t=[],P.__e(s,n.__v)}}),tt&&tt(e,t)},P.unmount=function(e){nt&&nt(e);var t,n=e.__c;n&&n.__H&&(n.__H.__.forEach(function(s){try{le(s)}catch(a){t=a}}),n.__H=void 0,t&&P.__e(t,n.__v))};var st=typeof requestAnimationFrame=="function";function Pt(e){var t,n=function(){clearTimeout(s),st&&cancelAnimationFrame(t),setTimeout(e)},s=setTimeout(n,35);st&&(t=requestAnimationFrame(n))}function le(e){var t=C,n=e.__c;typeof n=="function"&&(e.__c=void 0,n()),C=t}function ve(e){var t=C;e.__c=e.__(),C=t}function lt(e,t){return!e||e.length!==t.length||t.some(function(n,s){return n!==e[s]})}function it(e,t){return typeof t=="function"?t(e):t}var ut=function(e,t,n,s){var a;t[0]=0;for(var o=1;o<t.length;o++){var r=t[o++],i=t[o]?(t[0]|=r?1:2,n[t[o++]]):t[++o];r===3?s[0]=i:r===4?s[1]=Object.assign(s[1]||{},i):r===5?(s[1]=s[1]||{})[t[++o]]=i:r===6?s[1][t[++o]]+=i+"":r?(a=e.apply(i,ut(e,i,n,["",null])),s.push(a),i[0]?t[0]|=2:(t[o-2]=0,t[o]=a)):s.push(i)}return s},ct=new Map;function ce(e){var t=ct.get(this);return t||(t=new Map,ct.set(this,t)),(t=ut(this,t.get(e)||(t.set(e,t=(function(n){for(var s,a,o=1,r="",i="",_=[0],c=function(h){o===1&&(h||(r=r.replace(/^\s*\n\s*|\s*\n\s*$/g,"")))?_.push(0,h,r):o===3&&(h||r)?(_.push(3,h,r),o=2):o===2&&r==="..."&&h?_.push(4,h,0):o===2&&r&&!h?_.push(5,0,!0,r):o>=5&&((r||!h&&o===5)&&(_.push(o,0,r,a),o=6),h&&(_.push(o,h,0,a),o=6)),r=""},u=0;u<n.length;u++){u&&(o===1&&c(),c(u));for(var l=0;l<n[u].length;l++)s=n[u][l],o===1?s==="<"?(c(),_=[_],o=3):r+=s:o===4?r==="--"&&s===">"?(o=1,r=""):r=s+r[0]:i?s===i?i="":r+=s:s==='"'||s==="'"?i=s:s===">"?(c(),o=1):o&&(s==="="?(o=5,a=r,r=""):s==="/"&&(o<5||n[u][l+1]===">")?(c(),o===3&&(_=_[0]),o=_,(_=_[0]).push(2,0,o),o=0):s===" "||s==="	"||s===`
`||s==="\r"?(c(),o=2):r+=s),o===3&&r==="!--"&&(o=4,_=_[0])}return c(),_})(e)),t),arguments,[])).length>1?t:t[0]}var ke="rbee-token",H=class extends Error{},j={get:()=>sessionStorage.getItem(ke)||"",set:e=>e?sessionStorage.setItem(ke,e):sessionStorage.removeItem(ke)};function _t(e={}){let t={...e},n=j.get();return n&&(t.Authorization=`Bearer ${n}`),t}async function dt(e){if(e.status===401)return new H("this node needs its API token");let t=`${e.status} ${e.statusText}`;try{let n=await e.json();t=n?.error?.message||n?.error||t}catch{}return new Error(t)}async function we(e,{method:t="GET",body:n,signal:s}={}){let a=await fetch(e,{method:t,signal:s,headers:_t(n===void 0?{}:{"Content-Type":"application/json"}),body:n===void 0?void 0:JSON.stringify(n)});if(!a.ok)throw await dt(a);let o=await a.text();return{body:o?JSON.parse(o):null,headers:a.headers}}var F=async(e,t)=>(await we(e,t)).body;async function Nt(e,t){let n=e.body.pipeThrough(new TextDecoderStream).getReader(),s="";for(;;){let{value:a,done:o}=await n.read();if(o)return;s+=a;let r;for(;(r=s.indexOf(`

`))>=0;){let i=s.slice(0,r);s=s.slice(r+2);let _="message",c=[];for(let u of i.split(`
`))u.startsWith("event:")?_=u.slice(6).trim():u.startsWith("data:")&&c.push(u.slice(5).replace(/^ /,""));c.length&&t(_,c.join(`
`))}}}async function ue(e,{method:t="GET",body:n,signal:s,onEvent:a,onResponse:o}){let r=await fetch(e,{method:t,signal:s,headers:_t(n===void 0?{Accept:"text/event-stream"}:{"Content-Type":"application/json",Accept:"text/event-stream"}),body:n===void 0?void 0:JSON.stringify(n)});if(!r.ok)throw await dt(r);o&&o(r),await Nt(r,a)}var I={bytes(e){if(e==null)return"\u2013";let t=["B","KB","MB","GB","TB"],n=0;for(;e>=1e3&&n<t.length-1;)e/=1e3,n++;return`${e.toFixed(n&&e<10?1:0)} ${t[n]}`},ms(e){return e==null?"\u2013":e<1e3?`${Math.round(e)} ms`:`${(e/1e3).toFixed(1)} s`},count(e){return e>=1e9?`${(e/1e9).toFixed(1)} B`:e>=1e6?`${Math.round(e/1e6)} M`:String(e)},rate(e){return e==null?"\u2013":`${e.toFixed(1)} tok/s`}};var R=ce.bind(Q),Se=[{key:"temperature",label:"Temperature",int:!1,min:0,step:"0.05"},{key:"top_k",label:"Top k",int:!0,min:0},{key:"top_p",label:"Top p",int:!1,min:0,step:"0.05"},{key:"min_p",label:"Min p",int:!1,min:0,step:"0.05"},{key:"repeat_penalty",label:"Repeat penalty",int:!1,min:0,step:"0.05"},{key:"seed",label:"Seed",int:!0},{key:"num_ctx",label:"Context length (num_ctx)",int:!0,min:1},{key:"num_predict",label:"Max tokens (num_predict)",int:!0,min:-2}],At=new Set([...Se.map(e=>e.key),"stop"]),Ee=e=>e.replace(/:latest$/,""),Te=e=>e.models.filter(t=>t.details?.parent_model).map(t=>({name:Ee(t.name),base:Ee(t.details.parent_model),details:t.details}));function pt(e,t,n){if(e=e.trim(),e.startsWith('"""')){let s=e.slice(3),a=s.indexOf('"""');if(a>=0)return[s.slice(0,a),0];let o=s;for(let r=n+1;r<t.length;r++){let i=t[r].indexOf('"""');if(o+=`
`+(i>=0?t[r].slice(0,i):t[r]),i>=0)return[o.replace(/^\n+/,""),r-n]}return[o,t.length-n]}return e.startsWith('"')&&e.endsWith('"')&&e.length>=2?[e.slice(1,-1).replaceAll('\\"','"').replaceAll("\\n",`
`),0]:[e,0]}function It(e){return/^-?\d+$/.test(e)||e.trim()!==""&&Number.isFinite(Number(e))?Number(e):e==="true"||e==="false"?e==="true":e}function Dt(e){let t={from:"",system:"",template:null,params:{},stop:[],messages:[],license:[],other:{}},n=e.split(`
`);for(let s=0;s<n.length;s++){let a=n[s].trim();if(!a||a.startsWith("#"))continue;let o=a.match(/^(\S+)\s*([\s\S]*)$/),r=o[1].toUpperCase(),i=o[2];if(r==="PARAMETER"||r==="MESSAGE"){let u=i.match(/^(\S+)\s+([\s\S]*)$/);if(!u)continue;let[l,h]=pt(u[2],n,s);s+=h,r==="MESSAGE"?t.messages.push({role:u[1].toLowerCase(),content:l}):u[1]==="stop"?t.stop.push(l):At.has(u[1])?t.params[u[1]]=String(l):t.other[u[1]]=It(l);continue}let[_,c]=pt(i,n,s);s+=c,r==="FROM"?t.from=_:r==="SYSTEM"?t.system=_:r==="TEMPLATE"?t.template=_:r==="LICENSE"&&t.license.push(_)}return t}var Ft=e=>e.replace(/\\([nt\\])/g,(t,n)=>({n:`
`,t:"	","\\":"\\"})[n]),Ht=e=>e.replace(/\\/g,"\\\\").replace(/\n/g,"\\n").replace(/\t/g,"\\t");function Lt(e){let t=e.name.trim();if(!t)return{error:"Give the preset a name."};if(!e.from.trim())return{error:"Choose the base model."};let n={...e.other};for(let i of Se){let _=(e.params[i.key]??"").trim();if(_==="")continue;let c=Number(_);if(!Number.isFinite(c)||i.int&&!Number.isInteger(c))return{error:`${i.label} must be ${i.int?"a whole number":"a number"}.`};n[i.key]=c}let s=e.stopText.split(`
`).filter(i=>i!=="").map(Ft);s.length&&(n.stop=s);let a=e.messages.filter(i=>i.content.trim()!==""),o={model:t,from:e.from.trim(),parameters:n,messages:a,stream:!1};e.system.trim()&&(o.system=e.system),e.template&&(o.template=e.template);let r=e.license.trim();return r&&(o.license=r),{body:o}}var X=e=>e.includes(`
`)||e.includes('"')?`"""${e}"""`:`"${e}"`;function Ot(e){let t=`FROM ${e.from}
`;e.template!=null&&(t+=`TEMPLATE ${X(e.template)}
`),e.system!=null&&(t+=`SYSTEM ${X(e.system)}
`);for(let[n,s]of Object.entries(e.parameters).sort(([a],[o])=>a<o?-1:a>o?1:0))for(let a of Array.isArray(s)?s:[s])t+=`PARAMETER ${n} ${typeof a=="string"?X(a):JSON.stringify(a)}
`;for(let n of e.messages)t+=`MESSAGE ${n.role} ${X(n.content)}
`;return e.license&&(t+=`LICENSE ${X(e.license)}
`),t}var xe=e=>({name:"",from:e||"",system:"",template:null,params:{},stopText:"",messages:[],license:"",other:{}});function mt({editing:e,bases:t,onSaved:n,onDeleted:s,onClose:a,onAuth:o}){let[r,i]=g(()=>xe(t[0])),[_,c]=g(!!e),[u,l]=g(null),[h,m]=g(null),[y,E]=g(!1),w=f=>f instanceof H?o():l(f.message),v=f=>F("/api/show",{method:"POST",body:{model:f}}).then(d=>{let k=Dt(d.modelfile||"");i({...xe(),name:f,from:Ee(k.from),system:d.system??k.system,template:k.template,params:k.params,stopText:k.stop.map(Ht).join(`
`),messages:k.messages,license:k.license.join(`
`),other:k.other})});B(()=>{if(!(e&&e===r.name)){if(l(null),m(null),!e)return i(xe(t[0]));c(!0),v(e).catch(w).finally(()=>c(!1))}},[e]);let b=f=>i(d=>({...d,...f})),N=(f,d)=>b({messages:r.messages.map((k,M)=>M===f?{...k,...d}:k)}),S=Lt(r);async function A(f){if(f.preventDefault(),m(null),S.error)return l(S.error);l(null),E(!0);try{await F("/api/create",{method:"POST",body:S.body}),await v(S.body.model),m(S.body.model),n(S.body.model)}catch(d){w(d)}E(!1)}async function D(){if(confirm(`Delete the preset ${e}? Its base model stays.`)){E(!0);try{await F("/api/delete",{method:"DELETE",body:{model:e}}),s(e)}catch(f){w(f)}E(!1)}}let p=e?`Edit preset ${e}`:"New preset";return _?R`<section class="preset-editor" aria-label=${p}><p role="status">Loading ${e}…</p></section>`:R`<section class="preset-editor" aria-labelledby="preset-h">
    <h3 id="preset-h">${p}</h3>
    <form onSubmit=${A} novalidate>
      <div class="fields">
        <label for="preset-name">Preset name</label>
        <input id="preset-name" value=${r.name} readOnly=${!!e} required autocomplete="off"
          onInput=${f=>b({name:f.target.value})} placeholder="e.g. terse-gemma" />
        <label for="preset-base">Base model</label>
        <input id="preset-base" list="preset-bases" value=${r.from} required autocomplete="off"
          onInput=${f=>b({from:f.target.value})} aria-describedby="preset-base-hint" />
        <datalist id="preset-bases">${t.map(f=>R`<option value=${f} />`)}</datalist>
        <small id="preset-base-hint">A model (or preset) on this node.</small>
        <label for="preset-system">System prompt</label>
        <textarea id="preset-system" rows="3" value=${r.system} onInput=${f=>b({system:f.target.value})}></textarea>
      </div>
      <fieldset class="params">
        <legend>Parameters <small>(empty: the request's or the engine's default)</small></legend>
        ${Se.map(f=>R`<div>
            <label for=${`preset-${f.key}`}>${f.label}</label>
            <input id=${`preset-${f.key}`} type="number" inputmode=${f.int?"numeric":"decimal"} step=${f.step||"1"} min=${f.min}
              value=${r.params[f.key]??""} onInput=${d=>b({params:{...r.params,[f.key]:d.target.value}})} />
          </div>`)}
        <div class="stop">
          <label for="preset-stop">Stop sequences</label>
          <textarea id="preset-stop" rows="2" value=${r.stopText} aria-describedby="preset-stop-hint"
            onInput=${f=>b({stopText:f.target.value})}></textarea>
          <small id="preset-stop-hint">One a line; <code>\\n</code> is a newline.</small>
        </div>
      </fieldset>
      <fieldset class="examples">
        <legend>Example messages <small>(put before every chat)</small></legend>
        ${r.messages.length===0&&R`<p>None.</p>`}
        <ol>
          ${r.messages.map((f,d)=>R`<li class="example">
              <label for=${`preset-role-${d}`}>Role of message ${d+1}</label>
              <select id=${`preset-role-${d}`} value=${f.role} onChange=${k=>N(d,{role:k.target.value})}>
                ${["user","assistant","system"].map(k=>R`<option value=${k}>${k}</option>`)}
              </select>
              <label for=${`preset-content-${d}`}>Text of message ${d+1}</label>
              <textarea id=${`preset-content-${d}`} rows="2" value=${f.content} onInput=${k=>N(d,{content:k.target.value})}></textarea>
              <button type="button" class="danger" onClick=${()=>b({messages:r.messages.filter((k,M)=>M!==d)})}>Remove message ${d+1}</button>
            </li>`)}
        </ol>
        <button type="button" onClick=${()=>b({messages:[...r.messages,{role:r.messages.length%2?"assistant":"user",content:""}]})}>Add message</button>
      </fieldset>
      <label for="preset-license">License <small>(optional)</small></label>
      <textarea id="preset-license" rows="1" value=${r.license} onInput=${f=>b({license:f.target.value})}></textarea>
      <details class="preview" open>
        <summary>Modelfile preview</summary>
        <pre id="preset-preview" aria-live="polite">${S.body?Ot(S.body):S.error}</pre>
      </details>
      ${u&&R`<p class="error" role="alert" id="preset-error">${u}</p>`}
      ${h&&R`<p class="ok" role="status">Saved preset <strong>${h}</strong>.</p>`}
      <div class="row">
        <button type="submit" disabled=${y}>Save preset</button>
        ${e&&R`<button type="button" class="danger" disabled=${y} onClick=${D}>Delete preset</button>`}
        <button type="button" onClick=${a}>Close editor</button>
      </div>
    </form>
  </section>`}var $=ce.bind(Q),Ce=["Pool","Models","Chat","Activity"];function Rt(e){let[t,n]=g(null),[s,a]=g(null);return B(()=>{let o=new AbortController;return(async()=>{for(;!o.signal.aborted;){try{await ue("/v1/pool/events",{signal:o.signal,onEvent:(r,i)=>{r==="pool"&&(n(JSON.parse(i)),a(null))}})}catch(r){if(o.signal.aborted)return;if(r instanceof H)return e();a(String(r.message||r))}await new Promise(r=>setTimeout(r,1e3))}})(),()=>o.abort()},[]),[t,s]}function Me(e){return e?[{self:!0,name:e.node.name,peer_id:e.node.peer_id,api_addr:e.node.status?.api_addr||location.host,last_seen_ms:0,connected:!0,status:e.node.status},...e.peers]:[]}function Ut(e){let t=new Map;for(let n of e)for(let s of n.status?.on_disk||[])t.has(s.content_id)||t.set(s.content_id,s.names);return t}var ht=e=>e?String(e).slice(0,12):"";function qt({used:e,budget:t,label:n}){let s=t?Math.min(100,100*e/t):0;return $`<span class="meter">
    <meter min="0" max=${t||1} value=${e} aria-label=${n}></meter>
    ${I.bytes(e)} / ${I.bytes(t)} (${I.bytes(Math.max(0,t-e))} free, ${s.toFixed(0)}%)
  </span>`}function Bt({nodes:e}){let a=o=>{let r=2*Math.PI*o/Math.max(1,e.length)-Math.PI/2;return[110+(e.length>1?70*Math.cos(r):0),95+(e.length>1?70*Math.sin(r):0)]};return $`<svg class="topology" viewBox="0 0 220 190" role="img" aria-label=${`pool of ${e.length} nodes`}>
    ${e.slice(1).map((o,r)=>{let[i,_]=a(r+1),[c,u]=a(0);return $`<line x1=${c} y1=${u} x2=${i} y2=${_} class=${o.connected?"link":"link relayed"} />`})}
    ${e.map((o,r)=>{let[i,_]=a(r),c=(o.status?.loaded||[]).some(u=>u.live>0);return $`<g><circle cx=${i} cy=${_} r="13" class=${c?"node busy":o.self?"node self":"node"} />
        <text x=${i} y=${_+27} text-anchor="middle">${o.name}</text></g>`})}
  </svg>`}function Wt({pool:e,error:t}){let n=Me(e),s=Ut(n);return e?$`<section aria-labelledby="pool-h">
    <h2 id="pool-h">Pool <small>${e.pool?`key ${e.pool}`:"this node runs alone"}</small></h2>
    ${t&&$`<p class="error" role="alert">Live updates interrupted: ${t}</p>`}
    ${e.message&&$`<p>${e.message}</p>`}
    <p role="status" aria-live="polite" id="node-count">${n.length} node${n.length===1?"":"s"}</p>
    <div class="pool">
      <${Bt} nodes=${n} />
      <div class="scroll"><table id="nodes">
        <thead><tr><th scope="col">Node</th><th scope="col">Address</th><th scope="col">Devices</th><th scope="col">Loaded models</th><th scope="col">Tokens/s</th><th scope="col">Last seen</th></tr></thead>
        <tbody>
          ${n.map(a=>$`<tr data-node=${a.name} key=${a.peer_id||a.name}>
              <th scope="row">${a.name}${a.self?" (this node)":""}</th>
              <td>${a.api_addr||"\u2013"}${a.rtt_ms!=null?$`<br /><small>${a.rtt_ms.toFixed(1)} ms round trip</small>`:""}</td>
              <td>${(a.status?.devices||[]).map(o=>$`<div><strong>${o.name}</strong> <${qt} used=${o.used_bytes} budget=${o.budget_bytes} label=${`${a.name} ${o.name} memory`} /></div>`)}</td>
              <td>${(a.status?.loaded||[]).length===0?"none":$`<ul>${a.status.loaded.map(o=>$`<li>${(s.get(o.content_id)||[ht(o.content_id)])[0]}: ${o.live}/${o.max_live} live, ${o.queue} queued</li>`)}</ul>`}</td>
              <td>${(a.status?.tokens_per_sec??0).toFixed(1)}</td>
              <td>${a.self?"now":I.ms(a.last_seen_ms)+" ago"}</td>
            </tr>`)}
        </tbody>
      </table></div>
    </div>
  </section>`:$`<p role="status">${t?`Cannot read the pool: ${t}`:"Connecting to the node\u2026"}</p>`}function Jt(){let[e,t]=g([]),n=(o,r)=>t(i=>i.map(_=>_.id===o?{..._,...r(_)}:_));async function s(o,r,i){let{job_id:_}=await F("/v1/jobs",{method:"POST",body:{operation:o,...r}});return t(c=>[{id:_,label:i,operation:o,phase:"started",state:"running"},...c].slice(0,20)),ue(`/v1/jobs/${_}/stream`,{onEvent:(c,u)=>{let l=JSON.parse(u);c==="phase"?n(_,()=>({phase:l.phase||l.name||u})):c==="progress"?n(_,()=>({progress:l})):c==="done"?n(_,()=>({state:"done",result:l})):c==="error"&&n(_,()=>({state:"failed",error:l.message}))}}).catch(c=>n(_,()=>({state:"failed",error:String(c.message||c)}))),_}return{jobs:e,start:s,cancel:o=>F(`/v1/jobs/${o}`,{method:"DELETE"}).catch(()=>{})}}function Vt({job:e,cancel:t}){let n=e.progress;return $`<li class=${`job ${e.state}`} data-job=${e.operation}>
    <strong>${e.label}</strong> <span class="state">${e.state}</span>${e.state==="running"?` \xB7 ${e.phase}`:""}${e.result?.result?.source?` \xB7 source: ${e.result.result.source}`:""}
    ${n&&$`<div>
      <progress max=${n.total||1} value=${n.done} aria-label=${`${e.label} progress`}></progress>
      ${I.bytes(n.done)} of ${I.bytes(n.total)}${n.rate_bytes_per_sec!=null?` \xB7 ${I.bytes(n.rate_bytes_per_sec)}/s`:""}${n.eta_secs!=null?` \xB7 ${Math.ceil(n.eta_secs)} s left`:""}${n.peers?.length?` \xB7 from ${n.peers.join(", ")}`:""}
    </div>`}
    ${e.error&&$`<div class="error" role="alert">${e.error}</div>`}
    ${e.state==="running"&&$`<button type="button" onClick=${()=>t(e.id)}>Cancel</button>`}
  </li>`}function jt({pool:e,onAuth:t}){let n=Me(e),[s,a]=g([]),[o,r]=g(""),[i,_]=g(null),[c,u]=g([]),[l,h]=g(!1),{jobs:m,start:y,cancel:E}=Jt(),w=()=>Promise.all([F("/health"),F("/api/tags")]).then(([p,f])=>{a(p.models),u(Te(f))}).catch(p=>p instanceof H?t():_(p.message));B(()=>{w()},[e?.node?.status?.on_disk?.length,m.filter(p=>p.state!=="running").length]);let v=[...s.filter(p=>p.name).map(p=>p.name),...c.map(p=>p.name)],b=new Map;for(let p of n){for(let f of p.status?.on_disk||[]){let d=b.get(f.content_id)||{id:f.content_id,names:f.names,size:f.size,source:f.source,holders:[],loaded:[]};d.holders.push(p.name),b.set(f.content_id,d)}for(let f of p.status?.loaded||[])b.get(f.content_id)?.loaded.push(p.name)}for(let p of b.values())p.holders.sort(),p.loaded.sort();let N=p=>s.find(f=>f.content_id===p),S=p=>s.find(f=>f.name===p.base),A=(p,f,d)=>y(p,{model:f},d).catch(k=>_(k.message)),D=e?.node?.name;return $`<section aria-labelledby="models-h">
    <h2 id="models-h">Models</h2>
    <form class="row" onSubmit=${p=>{p.preventDefault(),_(null),o.trim()&&A("model_pull",o.trim(),`pull ${o.trim()}`)}}>
      <label for="pull-ref">Pull a model (name, content id, or HuggingFace <code>org/repo:file</code>)</label>
      <input id="pull-ref" value=${o} onInput=${p=>r(p.target.value)} placeholder="e.g. Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M" />
      <button type="submit">Pull</button>
    </form>
    <div class="row"><button type="button" onClick=${()=>h(null)} aria-expanded=${l===null}>New preset</button></div>
    ${l!==!1&&$`<${mt} editing=${l} bases=${v} onAuth=${t}
      onSaved=${p=>(h(p),w())}
      onDeleted=${()=>(h(!1),w())}
      onClose=${()=>h(!1)} />`}
    ${i&&$`<p class="error" role="alert">${i}</p>`}
    ${m.length>0&&$`<h3>Jobs on this node</h3><ul class="jobs">${m.map(p=>$`<${Vt} job=${p} cancel=${E} key=${p.id} />`)}</ul>`}
    <div class="scroll"><table id="models">
      <thead><tr><th scope="col">Model</th><th scope="col">Architecture</th><th scope="col">Quantization</th><th scope="col">Parameters</th><th scope="col">Size</th><th scope="col">Held by</th><th scope="col">Loaded on</th><th scope="col">Actions (this node)</th></tr></thead>
      <tbody>${b.size===0&&c.length===0&&$`<tr><td colspan="8">No models in the pool yet: pull one above, or import one with <code>rbee-node models import</code>.</td></tr>`}
      ${[...b.values()].map(p=>{let f=p.holders.includes(D),d=p.names[0];return $`<tr data-model=${d} key=${p.id}>
          <th scope="row">${d}${p.names.length>1?$`<br /><small>${p.names.slice(1).join(", ")}</small>`:""}<br /><small>${ht(p.id)}${p.source?` \xB7 ${p.source}`:""}</small></th>
          <td>${N(p.id)?.architecture||"\u2013"}</td>
          <td>${N(p.id)?.quantization||"\u2013"}</td>
          <td>${N(p.id)?.parameter_count?I.count(N(p.id).parameter_count):"\u2013"}</td>
          <td>${I.bytes(p.size)}</td>
          <td>${p.holders.join(", ")}</td>
          <td>${p.loaded.join(", ")||"\u2013"}</td>
          <td class="actions">${f?$`<button type="button" onClick=${()=>A("model_load",d,`load ${d}`)}>Load</button>
                <button type="button" onClick=${()=>A("model_unload",d,`unload ${d}`)}>Unload</button>
                <button type="button" class="danger" onClick=${()=>confirm(`Remove ${d} from this node's store?`)&&A("model_remove",d,`remove ${d}`)}>Remove</button>`:$`<button type="button" onClick=${()=>A("model_pull",p.id,`pull ${d}`)}>Pull here</button>`}</td>
        </tr>`})}
      ${c.map(p=>$`<tr data-model=${p.name} data-preset=${p.base} class="preset" key=${`preset:${p.name}`}>
          <th scope="row">${p.name} <span class="badge">preset</span><br /><small>of ${p.base}</small></th>
          <td>${p.details.family||"\u2013"}</td>
          <td>${p.details.quantization_level||"\u2013"}</td>
          <td>${S(p)?.parameter_count?I.count(S(p).parameter_count):"\u2013"}</td>
          <td>–</td>
          <td>${D}</td>
          <td>–</td>
          <td class="actions"><button type="button" onClick=${()=>h(p.name)} aria-label=${`Edit preset ${p.name}`}>Edit</button></td>
        </tr>`)}</tbody>
    </table></div>
  </section>`}function zt({models:e,onAuth:t}){let[n,s]=g(e[0]),[a,o]=g(""),[r,i]=g(null),[_,c]=g(null);async function u(l){if(l.preventDefault(),!a.trim())return;c(null);let h=performance.now();try{let{body:m,headers:y}=await we("/v1/embeddings",{method:"POST",body:{model:n,input:a}}),E=m.data[0].embedding;i({dims:E.length,head:E.slice(0,6),node:y.get("x-rbee-node"),ms:performance.now()-h,tokens:m.usage?.prompt_tokens})}catch(m){if(m instanceof H)return t();c(m.message)}}return $`<section aria-labelledby="embed-h" class="embed">
    <h3 id="embed-h">Embeddings</h3>
    <form class="row" onSubmit=${u}>
      <label for="embed-model">Embedding model</label>
      <select id="embed-model" value=${n} onChange=${l=>s(l.target.value)}>
        ${e.map(l=>$`<option value=${l}>${l}</option>`)}
      </select>
      <label for="embed-text">Text to embed</label>
      <input id="embed-text" value=${a} onInput=${l=>o(l.target.value)} />
      <button type="submit">Embed</button>
    </form>
    ${_&&$`<p class="error" role="alert">${_}</p>`}
    ${r&&$`<p class="embed-result"><strong>${r.dims} dimensions</strong> from <strong>${r.node}</strong> in ${I.ms(r.ms)} (${r.tokens} tokens): [${r.head.map(l=>l.toFixed(4)).join(", ")}, …]</p>`}
  </section>`}function Gt({pool:e,onAuth:t}){let[n,s]=g([]),[a,o]=g([]),[r,i]=g(""),[_,c]=g(""),[u,l]=g("0.7"),[h,m]=g("512"),[y,E]=g(""),[w,v]=g([]),[b,N]=g(!1),[S,A]=g(null),D=at(null),p=Me(e);B(()=>{Promise.all([F("/v1/models"),F("/api/tags")]).then(([d,k])=>{let M=Te(k).map(T=>T.name),L=d.data.filter(T=>(T.capabilities||["completion"]).includes("completion")).map(T=>T.id);o(d.data.filter(T=>(T.capabilities||[]).includes("embedding")).map(T=>T.id));let z=new Set(d.data.filter(T=>!(T.capabilities||["completion"]).includes("completion")).map(T=>T.content_id)),Z=[];for(let T of p)for(let G of T.status?.on_disk||[])z.has(G.content_id)||Z.push(G.names[0]);let U=[...new Set([...L,...M,...Z])];s(U),i(T=>T||U[0]||"")}).catch(d=>d instanceof H?t():A(d.message))},[p.length]);async function f(d){if(d.preventDefault(),!y.trim()||!r||b)return;let k=Number(u);if(!(k>=0&&k<=2))return A("Temperature must be a number from 0 to 2.");let M=Number(h);if(!(Number.isInteger(M)&&M>=1))return A("Max tokens must be a whole number of at least 1.");A(null);let L=[...w.filter(O=>O.role!=="meta"),{role:"user",content:y}],z={role:"assistant",content:"",pending:!0};v([...L,z]),E(""),N(!0),D.current=new AbortController;let Z=performance.now(),U=null,T=null,G=null,Pe=null,Ne=0,Ae=O=>v([...L,{...z,...O}]);try{await ue("/v1/chat/completions",{method:"POST",signal:D.current.signal,body:{model:r,stream:!0,stream_options:{include_usage:!0},temperature:k,max_tokens:M,messages:[..._.trim()?[{role:"system",content:_}]:[],...L]},onResponse:O=>T=O.headers.get("x-rbee-node"),onEvent:(O,Ie)=>{if(Ie==="[DONE]")return;let J=JSON.parse(Ie);if(J.error)throw new Error(J.error.message);J.usage&&(G=J.usage.completion_tokens,Pe=J.usage.prompt_tokens);let De=J.choices?.[0]?.delta?.content;De&&(U==null&&(U=performance.now()),Ne++,z.content+=De,Ae({node:T}))}})}catch(O){O.name!=="AbortError"&&(O instanceof H&&t(),A(O.message))}let bt=performance.now(),_e=G??Ne,gt=U!=null&&_e>1?(_e-1)/((bt-U)/1e3):null;Ae({pending:!1,node:T,ttft:U!=null?U-Z:null,tokens:_e,prompt:Pe,tps:gt,stopped:D.current?.signal.aborted}),N(!1)}return $`<section aria-labelledby="chat-h">
    <h2 id="chat-h">Chat</h2>
    <div class="row">
      <label for="chat-model">Model</label>
      <select id="chat-model" value=${r} onChange=${d=>i(d.target.value)}>
        ${n.length===0&&$`<option value="">no model in the pool</option>`}
        ${n.map(d=>$`<option value=${d}>${d}</option>`)}
      </select>
      <label for="chat-temp">Temperature</label>
      <input id="chat-temp" type="number" min="0" max="2" step="0.1" value=${u} onInput=${d=>l(d.target.value)} />
      <label for="chat-max">Max tokens</label>
      <input id="chat-max" type="number" min="1" step="1" value=${h} onInput=${d=>m(d.target.value)} />
      <button type="button" onClick=${()=>v([])} disabled=${b}>New chat</button>
    </div>
    <label for="chat-system">System prompt</label>
    <textarea id="chat-system" rows="2" value=${_} onInput=${d=>c(d.target.value)}></textarea>
    <ol class="messages" aria-live="polite">
      ${w.map(d=>$`<li class=${`msg ${d.role}`}>
          <span class="who">${d.role==="user"?"You":"Model"}</span>
          <div class="text">${d.content}${d.pending?"\u258D":""}</div>
          ${d.role==="assistant"&&!d.pending&&$`<small class="served">served by <strong class="served-by">${d.node||"?"}</strong> · ${d.tokens} tokens${d.prompt!=null?$` · <span class="prompt-tokens">${d.prompt} prompt tokens</span>`:""} · TTFT ${I.ms(d.ttft)} · ${I.rate(d.tps)}${d.stopped?" \xB7 stopped":""}</small>`}
        </li>`)}
    </ol>
    ${S&&$`<p class="error" role="alert">${S}</p>`}
    <form class="compose" onSubmit=${f}>
      <label for="chat-input">Message</label>
      <textarea id="chat-input" rows="3" value=${y} onInput=${d=>E(d.target.value)}
        onKeyDown=${d=>d.key==="Enter"&&(d.ctrlKey||d.metaKey)&&f(d)}></textarea>
      <button type="submit" disabled=${b||!r}>Send</button>
      <button type="button" onClick=${()=>D.current?.abort()} disabled=${!b}>Stop</button>
    </form>
    ${a.length>0&&$`<${zt} models=${a} onAuth=${t} />`}
  </section>`}function ft({points:e,label:t,unit:n,format:s}){let r=Math.max(1e-9,...e.map(l=>l.v)),i=e.length?e[0].t:0,_=Math.max(1,(e.length?e[e.length-1].t:1)-i),c=e.map(l=>`${(l.t-i)/_*300},${80-l.v/r*76}`).join(" "),u=e.length?e[e.length-1].v:null;return $`<figure class="chart">
    <svg viewBox=${"0 0 300 80"} role="img" aria-label=${`${t}, last ${e.length} samples, now ${u==null?"unknown":s(u)}`} preserveAspectRatio="none">
      <polyline points=${c} />
    </svg>
    <figcaption>${t}: now ${u==null?"\u2013":s(u)}, peak ${s(r)} ${n}</figcaption>
  </figure>`}function Kt({onAuth:e}){let[t,n]=g(null),[s,a]=g([]),[o,r]=g(null);if(B(()=>{let u=!0,l=()=>Promise.all([F("/v1/activity"),F("/v1/jobs")]).then(([m,y])=>u&&(n(m),a(y.data),r(null))).catch(m=>m instanceof H?e():r(m.message));l();let h=setInterval(l,2e3);return()=>{u=!1,clearInterval(h)}},[]),!t)return $`<p role="status">${o||"Loading\u2026"}</p>`;let i=s.filter(u=>u.state==="failed"),_=u=>$`<tr>
    <td>${new Date(u.at_ms).toLocaleTimeString()}</td><td>${u.route}</td><td>${u.model||"\u2013"}</td><td>${u.node||"\u2013"}</td>
    <td>${u.completion_tokens??"\u2013"}</td><td>${I.ms(u.first_byte_ms)}</td><td>${I.ms(u.duration_ms)}</td><td>${u.status}</td></tr>`,c=$`<thead><tr><th scope="col">Time</th><th scope="col">Route</th><th scope="col">Model</th><th scope="col">Node</th><th scope="col">Tokens</th><th scope="col">First byte</th><th scope="col">Duration</th><th scope="col">Status</th></tr></thead>`;return $`<section aria-labelledby="act-h">
    <h2 id="act-h">Activity <small>this node</small></h2>
    ${o&&$`<p class="error" role="alert">${o}</p>`}
    <div class="charts">
      <${ft} label="Tokens/s" unit="" format=${u=>u.toFixed(1)} points=${t.history.map(u=>({t:u.at_ms,v:u.tokens_per_sec}))} />
      <${ft} label="Memory used" unit="" format=${I.bytes} points=${t.history.map(u=>({t:u.at_ms,v:u.used_bytes}))} />
    </div>
    <h3>Recent requests</h3>
    <div class="scroll"><table id="requests">${c}<tbody>${t.requests.map(_)}</tbody></table></div>
    <h3>Recent errors</h3>
    ${t.errors.length+i.length===0?$`<p>None.</p>`:$`<ul class="errors">
          ${t.errors.map(u=>$`<li><strong>${u.status}</strong> ${u.route} ${u.model||""}: ${u.error||"(no message)"}</li>`)}
          ${i.map(u=>$`<li><strong>job ${u.operation}</strong>: ${u.error?.message||u.error||"failed"}</li>`)}
        </ul>`}
  </section>`}function Qt({onDone:e}){let[t,n]=g(""),[s,a]=g(null);async function o(r){r.preventDefault(),j.set(t.trim());try{await F("/health"),e()}catch(i){j.set(""),a(i instanceof H?"That token was refused.":i.message)}}return $`<form class="login" onSubmit=${o} aria-labelledby="login-h">
    <h2 id="login-h">This node needs its API token</h2>
    <p>It is kept for this browser tab only (sessionStorage) and sent in the Authorization header.</p>
    <label for="token">API token</label>
    <input id="token" type="password" autocomplete="current-password" value=${t} onInput=${r=>n(r.target.value)} required />
    <button type="submit">Sign in</button>
    ${s&&$`<p class="error" role="alert">${s}</p>`}
  </form>`}function Yt({onAuth:e}){let[t,n]=g(()=>Ce.includes(location.hash.slice(1))?location.hash.slice(1):"Pool"),[s,a]=Rt(e);return B(()=>{let o=()=>Ce.includes(location.hash.slice(1))&&n(location.hash.slice(1));return addEventListener("hashchange",o),()=>removeEventListener("hashchange",o)},[]),$`<header>
      <h1>rbee <small>${s?.node?.name||""}</small></h1>
      <nav aria-label="Views"><ul>
        ${Ce.map(o=>$`<li><a href=${`#${o}`} aria-current=${t===o?"page":void 0}>${o}</a></li>`)}
      </ul></nav>
      ${j.get()&&$`<button type="button" class="signout" onClick=${()=>(j.set(""),e())}>Sign out</button>`}
    </header>
    <main>
      ${t==="Pool"&&$`<${Wt} pool=${s} error=${a} />`}
      ${t==="Models"&&$`<${jt} pool=${s} onAuth=${e} />`}
      ${t==="Chat"&&$`<${Gt} pool=${s} onAuth=${e} />`}
      ${t==="Activity"&&$`<${Kt} onAuth=${e} />`}
    </main>`}function Xt(){let[e,t]=g(!1),[n,s]=g(0);return e?$`<main><h1>rbee</h1><${Qt} onDone=${()=>(t(!1),s(a=>a+1))} /></main>`:$`<${Yt} key=${n} onAuth=${()=>t(!0)} />`}var $t=document.getElementById("app");$t.textContent="";Qe($`<${Xt} />`,$t);
