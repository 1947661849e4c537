"use strict";(self.rspackChunkawf_kernel=self.rspackChunkawf_kernel||[]).push([[700],{646(e,a,r){var t=r(601),o=r.n(t),n=r(314),i=(r.n(n))()(o());i.push([e.id,`/* awf-kernel: toolbar item, sandbox panel, denial notice. */

.awf-ToolbarItem-button {
  border: 1px solid var(--jp-border-color1);
  border-radius: 3px;
  background: var(--jp-layout-color1);
  color: var(--jp-ui-font-color1);
  font-size: var(--jp-ui-font-size1);
  padding: 0 6px;
  height: 22px;
  cursor: pointer;
  white-space: nowrap;
}
.awf-ToolbarItem-button::before { content: '\\1F6E1\\FE0E  '; }
.awf-ToolbarItem[data-kind='pending'] .awf-ToolbarItem-button,
.awf-ToolbarItem[data-kind='error'] .awf-ToolbarItem-button {
  border-color: var(--jp-warn-color1);
  color: var(--jp-warn-color1);
}
.awf-ToolbarItem[data-kind='record'] .awf-ToolbarItem-button { border-color: var(--jp-brand-color1); }

.awf-Panel {
  padding: 8px 12px;
  overflow: auto;
  background: var(--jp-layout-color1);
  color: var(--jp-ui-font-color1);
  font-size: var(--jp-ui-font-size1);
  min-width: 280px;
}
.awf-Panel h2 { font-size: var(--jp-ui-font-size3); margin: 4px 0; }
.awf-Panel h3 { font-size: var(--jp-ui-font-size2); margin: 12px 0 4px; }
.awf-Panel-path { color: var(--jp-ui-font-color2); word-break: break-all; }
.awf-Panel-state { font-weight: bold; margin: 4px 0; }
.awf-Panel-state[data-kind='pending'], .awf-Panel-state[data-kind='error'] { color: var(--jp-warn-color1); }
.awf-Panel-error, .awf-Errors, .awf-Why { color: var(--jp-error-color1); }
.awf-Pending { border-left: 4px solid var(--jp-warn-color1); padding: 4px 8px; margin: 8px 0; }
.awf-List { margin: 2px 0 6px; padding-left: 18px; }
.awf-List li, .awf-Host { font-family: var(--jp-code-font-family); word-break: break-all; }
.awf-Empty, .awf-Hint, .awf-Expanded { color: var(--jp-ui-font-color2); }
.awf-Denials { border-collapse: collapse; }
.awf-Denials td, .awf-Denials th { text-align: left; vertical-align: top; padding: 1px 6px; }
.awf-Panel label { display: block; margin-top: 6px; font-family: var(--jp-code-font-family); }
.awf-Edit { display: block; width: 100%; box-sizing: border-box; font-family: var(--jp-code-font-family); }
.awf-Panel .jp-Button { margin: 6px 0; padding: 2px 10px; }
.awf-Status { margin-left: 4px; }
.awf-Allowed { color: var(--jp-success-color1); }

.awf-Notice {
  border-left: 4px solid var(--jp-error-color1);
  padding: 4px 8px;
  text-align: left;
}
.awf-Notice-title { font-weight: bold; }
.awf-Notice-table { border-collapse: collapse; margin-left: 0; }
.awf-Notice-table td, .awf-Notice-table th { text-align: left; vertical-align: top; padding: 2px 8px; }
.awf-Notice .awf-Allow { padding: 1px 8px; cursor: pointer; }
`,""]),r.d(a,{},{A:i})},314(e){e.exports=function(e){var a=[];return a.toString=function(){return this.map(function(a){var r="",t=void 0!==a[5];return a[4]&&(r+="@supports (".concat(a[4],") {")),a[2]&&(r+="@media ".concat(a[2]," {")),t&&(r+="@layer".concat(a[5].length>0?" ".concat(a[5]):""," {")),r+=e(a),t&&(r+="}"),a[2]&&(r+="}"),a[4]&&(r+="}"),r}).join("")},a.i=function(e,r,t,o,n){"string"==typeof e&&(e=[[null,e,void 0]]);var i={};if(t)for(var l=0;l<this.length;l++){var c=this[l][0];null!=c&&(i[c]=!0)}for(var p=0;p<e.length;p++){var s=[].concat(e[p]);t&&i[s[0]]||(void 0!==n&&(void 0===s[5]||(s[1]="@layer".concat(s[5].length>0?" ".concat(s[5]):""," {").concat(s[1],"}")),s[5]=n),r&&(s[2]&&(s[1]="@media ".concat(s[2]," {").concat(s[1],"}")),s[2]=r),o&&(s[4]?(s[1]="@supports (".concat(s[4],") {").concat(s[1],"}"),s[4]=o):s[4]="".concat(o)),a.push(s))}},a}},601(e){e.exports=function(e){return e[1]}},72(e){var a=[];function r(e){for(var r=-1,t=0;t<a.length;t++)if(a[t].identifier===e){r=t;break}return r}function t(e,t){for(var o={},n=[],i=0;i<e.length;i++){var l=e[i],c=t.base?l[0]+t.base:l[0],p=o[c]||0,s="".concat(c," ").concat(p);o[c]=p+1;var f=r(s),d={css:l[1],media:l[2],sourceMap:l[3],supports:l[4],layer:l[5]};if(-1!==f)a[f].references++,a[f].updater(d);else{var u=function(e,a){var r=a.domAPI(a);return r.update(e),function(a){a?(a.css!==e.css||a.media!==e.media||a.sourceMap!==e.sourceMap||a.supports!==e.supports||a.layer!==e.layer)&&r.update(e=a):r.remove()}}(d,t);t.byIndex=i,a.splice(i,0,{identifier:s,updater:u,references:1})}n.push(s)}return n}e.exports=function(e,o){var n=t(e=e||[],o=o||{});return function(e){e=e||[];for(var i=0;i<n.length;i++){var l=r(n[i]);a[l].references--}for(var c=t(e,o),p=0;p<n.length;p++){var s=r(n[p]);0===a[s].references&&(a[s].updater(),a.splice(s,1))}n=c}}},659(e){var a={};e.exports=function(e,r){var t=function(e){if(void 0===a[e]){var r=document.querySelector(e);if(window.HTMLIFrameElement&&r instanceof window.HTMLIFrameElement)try{r=r.contentDocument.head}catch(e){r=null}a[e]=r}return a[e]}(e);if(!t)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");t.appendChild(r)}},540(e){e.exports=function(e){var a=document.createElement("style");return e.setAttributes(a,e.attributes),e.insert(a,e.options),a}},56(e,a,r){e.exports=function(e){var a=r.nc;a&&e.setAttribute("nonce",a)}},206(e){e.exports=function(e){if("u"<typeof document)return{update:function(){},remove:function(){}};var a=e.insertStyleElement(e);return{update:function(r){var t,o,n;t="",r.supports&&(t+="@supports (".concat(r.supports,") {")),r.media&&(t+="@media ".concat(r.media," {")),(o=void 0!==r.layer)&&(t+="@layer".concat(r.layer.length>0?" ".concat(r.layer):""," {")),t+=r.css,o&&(t+="}"),r.media&&(t+="}"),r.supports&&(t+="}"),(n=r.sourceMap)&&"u">typeof btoa&&(t+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(n))))," */")),e.styleTagTransform(t,a,e.options)},remove:function(){var e;null===(e=a).parentNode||e.parentNode.removeChild(e)}}}},113(e){e.exports=function(e,a){if(a.styleSheet)a.styleSheet.cssText=e;else{for(;a.firstChild;)a.removeChild(a.firstChild);a.appendChild(document.createTextNode(e))}}},959(e,a,r){var t=r(72),o=r.n(t),n=r(206),i=r.n(n),l=r(659),c=r.n(l),p=r(56),s=r.n(p),f=r(540),d=r.n(f),u=r(113),v=r.n(u),w=r(646),m={};m.styleTagTransform=v(),m.setAttributes=s(),m.insert=c().bind(null,"head"),m.domAPI=i(),m.insertStyleElement=d(),o()(w.A,m),w.A&&w.A.locals&&w.A.locals}}]);