"use strict";(self.rspackChunkawf_kernel=self.rspackChunkawf_kernel||[]).push([[700],{646(a,r,e){var o=e(601),t=e.n(o),n=e(314),i=(e.n(n))()(t());i.push([a.id,`/* awf-kernel: toolbar item, sandbox panel, denial notice. */

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
.awf-ToolbarItem-button::before {
  content: '';
  display: inline-block;
  width: 8px;
  height: 8px;
  margin-right: 5px;
  border-radius: 50%;
  background: var(--jp-success-color1);
}
.awf-ToolbarItem[data-kind='pending'] .awf-ToolbarItem-button::before,
.awf-ToolbarItem[data-kind='error'] .awf-ToolbarItem-button::before { background: var(--jp-warn-color1); }
.awf-ToolbarItem[data-kind='record'] .awf-ToolbarItem-button::before { background: var(--jp-brand-color1); }
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
`,""]),e.d(r,{},{A:i})},314(a){a.exports=function(a){var r=[];return r.toString=function(){return this.map(function(r){var e="",o=void 0!==r[5];return r[4]&&(e+="@supports (".concat(r[4],") {")),r[2]&&(e+="@media ".concat(r[2]," {")),o&&(e+="@layer".concat(r[5].length>0?" ".concat(r[5]):""," {")),e+=a(r),o&&(e+="}"),r[2]&&(e+="}"),r[4]&&(e+="}"),e}).join("")},r.i=function(a,e,o,t,n){"string"==typeof a&&(a=[[null,a,void 0]]);var i={};if(o)for(var l=0;l<this.length;l++){var c=this[l][0];null!=c&&(i[c]=!0)}for(var p=0;p<a.length;p++){var f=[].concat(a[p]);o&&i[f[0]]||(void 0!==n&&(void 0===f[5]||(f[1]="@layer".concat(f[5].length>0?" ".concat(f[5]):""," {").concat(f[1],"}")),f[5]=n),e&&(f[2]&&(f[1]="@media ".concat(f[2]," {").concat(f[1],"}")),f[2]=e),t&&(f[4]?(f[1]="@supports (".concat(f[4],") {").concat(f[1],"}"),f[4]=t):f[4]="".concat(t)),r.push(f))}},r}},601(a){a.exports=function(a){return a[1]}},72(a){var r=[];function e(a){for(var e=-1,o=0;o<r.length;o++)if(r[o].identifier===a){e=o;break}return e}function o(a,o){for(var t={},n=[],i=0;i<a.length;i++){var l=a[i],c=o.base?l[0]+o.base:l[0],p=t[c]||0,f="".concat(c," ").concat(p);t[c]=p+1;var s=e(f),d={css:l[1],media:l[2],sourceMap:l[3],supports:l[4],layer:l[5]};if(-1!==s)r[s].references++,r[s].updater(d);else{var u=function(a,r){var e=r.domAPI(r);return e.update(a),function(r){r?(r.css!==a.css||r.media!==a.media||r.sourceMap!==a.sourceMap||r.supports!==a.supports||r.layer!==a.layer)&&e.update(a=r):e.remove()}}(d,o);o.byIndex=i,r.splice(i,0,{identifier:f,updater:u,references:1})}n.push(f)}return n}a.exports=function(a,t){var n=o(a=a||[],t=t||{});return function(a){a=a||[];for(var i=0;i<n.length;i++){var l=e(n[i]);r[l].references--}for(var c=o(a,t),p=0;p<n.length;p++){var f=e(n[p]);0===r[f].references&&(r[f].updater(),r.splice(f,1))}n=c}}},659(a){var r={};a.exports=function(a,e){var o=function(a){if(void 0===r[a]){var e=document.querySelector(a);if(window.HTMLIFrameElement&&e instanceof window.HTMLIFrameElement)try{e=e.contentDocument.head}catch(a){e=null}r[a]=e}return r[a]}(a);if(!o)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");o.appendChild(e)}},540(a){a.exports=function(a){var r=document.createElement("style");return a.setAttributes(r,a.attributes),a.insert(r,a.options),r}},56(a,r,e){a.exports=function(a){var r=e.nc;r&&a.setAttribute("nonce",r)}},206(a){a.exports=function(a){if("u"<typeof document)return{update:function(){},remove:function(){}};var r=a.insertStyleElement(a);return{update:function(e){var o,t,n;o="",e.supports&&(o+="@supports (".concat(e.supports,") {")),e.media&&(o+="@media ".concat(e.media," {")),(t=void 0!==e.layer)&&(o+="@layer".concat(e.layer.length>0?" ".concat(e.layer):""," {")),o+=e.css,t&&(o+="}"),e.media&&(o+="}"),e.supports&&(o+="}"),(n=e.sourceMap)&&"u">typeof btoa&&(o+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(n))))," */")),a.styleTagTransform(o,r,a.options)},remove:function(){var a;null===(a=r).parentNode||a.parentNode.removeChild(a)}}}},113(a){a.exports=function(a,r){if(r.styleSheet)r.styleSheet.cssText=a;else{for(;r.firstChild;)r.removeChild(r.firstChild);r.appendChild(document.createTextNode(a))}}},959(a,r,e){var o=e(72),t=e.n(o),n=e(206),i=e.n(n),l=e(659),c=e.n(l),p=e(56),f=e.n(p),s=e(540),d=e.n(s),u=e(113),b=e.n(u),w=e(646),v={};v.styleTagTransform=b(),v.setAttributes=f(),v.insert=c().bind(null,"head"),v.domAPI=i(),v.insertStyleElement=d(),t()(w.A,v),w.A&&w.A.locals&&w.A.locals}}]);